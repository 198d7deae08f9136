"""Independent reference for the golden files: computes each example job's expected view from
the golden input with plain Python (no Sluice code), so the golden files are not merely what
Sluice printed once.  Run: python3 tests/golden/reference.py  (rewrites *.expected.jsonl)."""
import json, random, datetime as dt, pathlib, math

HERE = pathlib.Path(__file__).parent
UTC = dt.timezone.utc


def make_input():
    rng = random.Random(20261121)
    base = dt.datetime(2024, 5, 1, 10, 57, 0, tzinfo=UTC)
    rows = []
    for i in range(60):
        t = base + dt.timedelta(seconds=rng.randrange(0, 6 * 60), milliseconds=rng.randrange(0, 1000))
        ms = int(t.timestamp() * 1000)
        rec = {
            "order_id": f"o{i:03d}",
            "customer_id": f"c{rng.randrange(0, 12):02d}",
            "email": f"user{i}@example.com" if i % 7 else None,
            "region": rng.choice(["eu", "us", "apac", None]) if i % 11 else None,
            "amount": rng.randrange(1, 800) / 4 if i % 13 else None,
            "status": rng.choice(["completed", "completed", "completed", "pending", "cancelled"]),
            # half the records carry epoch milliseconds, half RFC 3339 text
            "event_time": ms if i % 2 else t.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        rows.append(rec)
    return rows


def event_ms(rec):
    v = rec["event_time"]
    if isinstance(v, int):
        return v
    return int(dt.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1000)


def ts(ms):
    # Arrow's JSON writer renders a UTC timestamp like this.
    d = dt.datetime.fromtimestamp(ms / 1000, tz=UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S") + "Z"


def orders_per_minute(rows, status_filter=True):
    windows = {}
    for r in rows:
        if status_filter and r["status"] != "completed":
            continue
        start = event_ms(r) // 60000 * 60000
        w = windows.setdefault(start, [0, 0.0, 0])
        w[0] += 1
        if r["amount"] is not None:
            w[1] += r["amount"]
            w[2] += 1
    out = []
    for start in sorted(windows):
        n, total, n_amount = windows[start]
        out.append({
            "window_start": ts(start), "window_end": ts(start + 60000),
            "total_orders": n,
            "total_revenue": total if n_amount else None,
            "avg_order_value": total / n_amount if n_amount else None,
        })
    return out


def region_totals(rows):
    groups = {}
    for r in rows:
        g = groups.setdefault(r["region"], [0.0, 0, 0, set()])
        if r["amount"] is not None:
            g[0] += r["amount"]
            g[2] += 1
        g[1] += 1
        if r["customer_id"] is not None:
            g[3].add(r["customer_id"])
    keys = sorted(groups, key=lambda k: (k is None, k or ""))
    return [{"region": k, "total": groups[k][0] if groups[k][2] else None, "orders": groups[k][1],
             "customers": len(groups[k][3])} for k in keys]


def mask(email):
    if email is None:
        return None
    local, _, domain = email.partition("@")
    if not domain:
        return "*" * len(local)
    return local[:1] + "***@" + domain


def completed_orders_masked(rows):
    out = []
    for r in rows:
        if r["status"] != "completed":
            continue
        out.append({
            "order_id": r["order_id"], "customer_id": r["customer_id"], "email": mask(r["email"]),
            "region": r["region"].upper() if r["region"] is not None else None,
            "amount_cents": int(round(r["amount"] * 100)) if r["amount"] is not None else None,
            "event_time": ts(event_ms(r)).replace("Z", "") + f".{event_ms(r) % 1000:03d}Z" if event_ms(r) % 1000 else ts(event_ms(r)),
        })
    return sorted(out, key=lambda o: o["order_id"])


def make_customers():
    """Versions of customers c00..c10 (c11 has none), valid from times around the orders'."""
    rng = random.Random(20261204)
    base = dt.datetime(2024, 5, 1, 10, 50, 0, tzinfo=UTC)
    rows = []
    for c in range(11):
        for s in sorted(rng.sample(range(0, 20 * 60), rng.randrange(1, 4))):
            t = base + dt.timedelta(seconds=s)
            rows.append({
                "customer_id": f"c{c:02d}",
                "region": rng.choice(["eu", "us", "apac", None]),
                "tier": rng.choice(["gold", "silver"]),
                "updated_at": t.isoformat().replace("+00:00", "Z"),
            })
    rng.shuffle(rows)
    return rows


def rfc3339_ms(text):
    return int(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def orders_by_customer_region(rows, customers):
    """Each order with the customer version valid at its time (the latest updated_at at or
    before it; none: null region), counted and summed per that region."""
    groups = {}
    for r in rows:
        valid = [c for c in customers
                 if c["customer_id"] == r["customer_id"] and rfc3339_ms(c["updated_at"]) <= event_ms(r)]
        version = max(valid, key=lambda c: rfc3339_ms(c["updated_at"])) if valid else None
        region = version["region"] if version else None
        g = groups.setdefault(region, [0, 0.0, 0])
        g[0] += 1
        if r["amount"] is not None:
            g[1] += r["amount"]
            g[2] += 1
    keys = sorted(groups, key=lambda k: (k is None, k or ""))
    return [{"customer_region": k, "orders": groups[k][0],
             "revenue": groups[k][1] if groups[k][2] else None} for k in keys]


def dump(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    rows = make_input()
    dump(HERE / "orders.input.jsonl", rows)
    dump(HERE / "orders_per_minute.expected.jsonl", orders_per_minute(rows))
    dump(HERE / "orders_per_minute_polars.expected.jsonl", orders_per_minute(rows))
    dump(HERE / "region_totals.expected.jsonl", region_totals(rows))
    dump(HERE / "completed_orders_masked.expected.jsonl", completed_orders_masked(rows))
    customers = make_customers()
    dump(HERE / "customers.input.jsonl", customers)
    dump(HERE / "orders_by_customer_region.expected.jsonl", orders_by_customer_region(rows, customers))
