"""The serving API against its OpenAPI document, on live servers with real data.

`sluice demo` (in-process Kafka, the speed layer, backfills, the serving layer without a
token: the setup issue 16's user ran schemathesis against) and `sluice serve --token` over
the demo's Kafka and lake. Against each, schemathesis (PyPI, in $SLUICE_VENV) loads the
document the server serves at /openapi.yaml and runs every check (`--checks all`: status
codes, content types, headers, response schemas with formats, negative data rejected,
positive data accepted, auth enforced exactly where the document says, 405s with `Allow`,
...) over the examples, coverage, fuzzing and stateful phases, with a bounded number of
examples; any failure fails the test. Beside it, the `Time` schema of `from`/`to` is checked
string by string: the server answers 200 exactly for the strings the schema accepts.

One allowance, made in the schemathesis configuration written below: for `POST /v1/sql`, a
400 (`bad_sql`, `sql_refused`) answers a schema-valid request, since whether a string is SQL
the server runs is not something JSON Schema can say.

Needs the `sluice` binary (SLUICE_BIN, default $CARGO_TARGET_DIR/debug/sluice); no broker.
"""
import json
import pathlib
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ElementTree

import jsonschema_rs
import pytest
import yaml

from sluice_harness import demo_and_token_server, wait_until

# schemathesis's CLI, beside the venv's python that runs this test.
ST = pathlib.Path(sys.executable).with_name("st")
TOKEN = "openapi-test-token"
# Test cases per operation and phase: the two runs take about 20 s each.
MAX_EXAMPLES = 20

# schemathesis's own default for positive_data_acceptance, plus 400 for SQL (see above).
SCHEMATHESIS_CONFIG = """
[[operations]]
include-operation-id = "runSql"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
"""


def fetch(url, token=None):
    """(status, headers, body bytes) of a GET."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()
    except (urllib.error.URLError, ConnectionError):
        return None, None, b""


def ready_with_rows(url, job, token=None):
    """Waits until `url` is ready (/health 200) and `job`'s view answers rows."""
    wait_until(f"{url}/health to answer 200", lambda: fetch(f"{url}/health")[0] == 200)

    def rows():
        status, _, body = fetch(f"{url}/v1/jobs/{job}/view?limit=1", token)
        return status == 200 and json.loads(body)["count"] > 0
    wait_until(f"{job}'s view to answer rows", rows)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The running demo (no token) and `sluice serve --token` over its Kafka and lake."""
    work = tmp_path_factory.mktemp("openapi")
    with demo_and_token_server(work, work, TOKEN, ["--rate", "200", "--backfill-every", "5s"]) as (demo_url, token_url):
        jobs = wait_until("the demo's job list", lambda: fetch(f"{demo_url}/v1/jobs")[0] == 200
                          and json.loads(fetch(f"{demo_url}/v1/jobs")[2])["jobs"])
        job = jobs[0]["job"]
        ready_with_rows(demo_url, job)
        ready_with_rows(token_url, job, TOKEN)
        yield {"job": job, "work": work, None: demo_url, TOKEN: token_url}


def document(url):
    status, headers, body = fetch(f"{url}/openapi.yaml")
    assert status == 200 and headers["Content-Type"] == "application/yaml", (status, headers)
    return yaml.safe_load(body)


def operations(doc):
    """Every operation of `doc` as schemathesis labels it (`GET /v1/jobs`)."""
    methods = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
    return {f"{method.upper()} {path}" for path, item in doc["paths"].items() for method in item if method in methods}


@pytest.mark.parametrize("token", [None, TOKEN], ids=["demo-without-token", "serve-with-token"])
def test_schemathesis_finds_nothing(servers, token):
    url = servers[token]
    work = servers["work"] / ("token" if token else "open")
    work.mkdir()
    config = work / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    junit = work / "junit.xml"
    command = [str(ST), "--config-file", str(config), "run", f"{url}/openapi.yaml",
               "--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--workers", "2",
               "--request-timeout", "20", "--generation-database", "none", "--no-color",
               "--report", "junit", "--report-junit-path", str(junit)]
    if token:
        command += ["--header", f"Authorization: Bearer {token}"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=work)
    output = run.stdout[-20000:] + run.stderr[-5000:]
    assert run.returncode == 0, f"schemathesis failed against {url}:\n{output}"

    # Every documented operation was tested, and passed; schemathesis leaves out the document's
    # own path, and reports its stateful phase as one more case.
    suite = ElementTree.parse(junit).getroot()
    tested = {case.get("name") for case in suite.iter("testcase")}
    assert tested == operations(document(url)) - {"GET /openapi.yaml"} | {"Stateful tests"}, output
    for case in suite.iter("testcase"):
        assert not list(case), f"{case.get('name')}: {[ElementTree.tostring(c) for c in case]}"


def test_the_served_document_requires_the_token_exactly_when_the_server_does(servers):
    job = servers["job"]
    for token in (None, TOKEN):
        url = servers[token]
        doc = document(url)
        assert doc.get("security") == ([{"bearerAuth": []}] if token else None), doc.get("security")
        # What each document says about auth is what the server does.
        status = fetch(f"{url}/v1/jobs/{job}")[0]
        assert status == (401 if token else 200), (url, status)
        assert fetch(f"{url}/v1/jobs/{job}", token)[0] == 200
        for probe in ("/health", "/metrics", "/openapi.yaml"):
            assert fetch(f"{url}{probe}")[0] == 200, probe
        # The examples name the served job.
        job_parameter = doc["components"]["parameters"]["Job"]
        assert job_parameter["example"] == job
        sql = doc["paths"]["/v1/sql"]["post"]["requestBody"]["content"]["application/json"]["examples"]
        assert all(f"FROM {job} " in e["value"]["sql"] for e in sql.values()), sql


# The forms of `from` and `to` the `Time` schema declares, and text it refuses; the server must
# answer 200 for the first and 400 for the rest, by the schema's own verdict on each string.
DOCUMENTED_TIMES = [
    "2024-05-01T10:00:00Z", "2024-05-01t10:00:00z", "2024-05-01T12:00:00+02:00",
    "2024-05-01T05:30:00.123456789-04:30", "2024-05-01T10:00:00.5Z", "2024-05-01T10:00:00-00:00",
    "2024-05-01", "2024-02-29", "0000-01-01", "1714557600000", "-1000", "0", "007",
    "999999999999999",
]
UNDOCUMENTED_TIMES = [
    "", " 2024-05-01", "2024-05-01 ", "2024-05-01 10:00:00Z", "2024-05-01T10:00:00",
    "2024-05-01T10:00Z", "2016-12-31T23:59:60Z", "2024-05-01T10:00:00.Z",
    "2024-05-01T10:00:00.1234567890Z", "2024-05-01T24:00:00Z", "2024-05-01T10:60:00Z",
    "2024-05-01T10:00:00+24:00", "2024-05-01T10:00:00+0200", "2024-05-01T10:00:00Zjunk",
    "2024-02-30", "2023-02-29", "2024-13-01", "2024-5-1", "+1714557600000", "1e12",
    "1714557600000.5", "1000000000000000", "--1", "-", "yesterday", "\uff12\uff10\uff12\uff14-05-01",
]


def test_time_parameters_are_answered_as_their_schema_says(servers):
    url, job = servers[None], servers["job"]
    schema = document(url)["components"]["schemas"]["Time"]
    valid = jsonschema_rs.validator_for(schema, validate_formats=True)
    assert all(valid.is_valid(t) for t in DOCUMENTED_TIMES), [t for t in DOCUMENTED_TIMES if not valid.is_valid(t)]
    assert not any(valid.is_valid(t) for t in UNDOCUMENTED_TIMES), [t for t in UNDOCUMENTED_TIMES if valid.is_valid(t)]
    for text in DOCUMENTED_TIMES + UNDOCUMENTED_TIMES:
        for parameter in ("from", "to"):
            query = urllib.parse.urlencode({parameter: text})
            status, headers, body = fetch(f"{url}/v1/jobs/{job}/view?{query}&limit=1")
            if valid.is_valid(text):
                assert status == 200, (parameter, text, body)
            else:
                assert (status, headers["Content-Type"]) == (400, "application/json"), (parameter, text, body)
                error = json.loads(body)
                assert error["error"] == "bad_request" and set(error) == {"error", "message"}, error
                assert error["message"].startswith(f"`{parameter}`: ") and text in error["message"], error
