//! Recognising a temporal join in a job's SQL, and refusing the joins no backfill reproduces.
//!
//! `FOR SYSTEM_TIME AS OF o.event_time` does not parse with the dialect the plan compiler uses
//! (sqlparser's generic dialect has no table versions), and DataFusion's planner would ignore
//! it and plan a plain join anyway, which answers "the latest version", whatever the row's
//! time. So the clause is cut out of the text before parsing ([`strip_versions`]), what it said
//! is recorded, and [`temporal_join`] checks the FROM clause it belonged to: the stream first,
//! one table joined by `[LEFT] JOIN … FOR SYSTEM_TIME AS OF <stream>.<event_time> ON …`.
//! Everything else a join could be is refused here with the reason and the alternative.

use datafusion::sql::sqlparser::ast::{JoinConstraint, JoinOperator, TableFactor, TableWithJoins};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use super::temporal::JoinKind;
use crate::error::{Error, Result};
use crate::flink_sql::Context;
use crate::spec::InputKind;

/// One `FOR SYSTEM_TIME AS OF` clause: the relation it followed (its last name part) and the
/// identifier parts of the time it named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Versioned {
    pub relation: String,
    pub at: Vec<String>,
}

/// The temporal join a statement declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TemporalSql {
    /// The table input joined (its name as the job declares it).
    pub table: String,
    pub kind: JoinKind,
}

/// An input of the job other than the primary stream, as the SQL may name it.
#[derive(Debug, Clone)]
pub(crate) struct OtherInput {
    pub name: String,
    pub kind: InputKind,
}

const PROCESSING_TIME: &str = "a lookup as of processing time (PROCTIME(), now(), a literal) depends on when it ran, which no backfill reproduces; write FOR SYSTEM_TIME AS OF <stream>.<event_time>";

/// `sql` with every `FOR SYSTEM_TIME AS OF <time>` cut out, and what each said. Only an
/// identifier (`o.event_time`) is accepted as the time.
pub(crate) fn strip_versions(cx: &Context, sql: &str) -> Result<(String, Vec<Versioned>)> {
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| Error::InvalidSql {
            job: cx.job.to_string(),
            source: Box::new(datafusion::sql::sqlparser::parser::ParserError::from(e).into()),
        })?;
    let offsets = ByteOffsets::of(sql);
    // Indices of the tokens that are not whitespace or comments.
    let solid: Vec<usize> = (0..tokens.len())
        .filter(|&i| !matches!(tokens[i].token, Token::Whitespace(_)))
        .collect();
    let word = |at: usize, text: &str| {
        solid.get(at).is_some_and(|&i| {
            matches!(&tokens[i].token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(text))
        })
    };
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    let mut found = Vec::new();
    let mut s = 0;
    while s < solid.len() {
        if !(word(s, "FOR") && word(s + 1, "SYSTEM_TIME") && word(s + 2, "AS") && word(s + 3, "OF"))
        {
            s += 1;
            continue;
        }
        let relation = s
            .checked_sub(1)
            .and_then(|p| match &tokens[solid[p]].token {
                Token::Word(w) => Some(w.value.clone()),
                _ => None,
            })
            .ok_or_else(|| {
                cx.refuse(
                    "FOR SYSTEM_TIME AS OF",
                    "it follows the table it looks up: JOIN customers FOR SYSTEM_TIME AS OF o.event_time AS c",
                )
            })?;
        // The time: `a` or `a.b`, not followed by `(` (a function call).
        let mut at = Vec::new();
        let mut next = s + 4;
        while let Some(Token::Word(w)) = solid.get(next).map(|&i| &tokens[i].token) {
            at.push(w.value.clone());
            next += 1;
            if !matches!(
                solid.get(next).map(|&i| &tokens[i].token),
                Some(Token::Period)
            ) {
                break;
            }
            next += 1;
        }
        // What may follow the time: an alias, AS, ON, a keyword, or the end of a list; not a
        // call's `(`, a literal (`TIMESTAMP '…'`) or an operator.
        let ends_clean = matches!(
            solid.get(next).map(|&i| &tokens[i].token),
            None | Some(
                Token::Word(_) | Token::Comma | Token::RParen | Token::SemiColon | Token::EOF
            )
        );
        if at.is_empty() || !ends_clean || at.len() > 2 {
            let shown = solid
                .get(s + 4)
                .map(|&i| tokens[i].token.to_string())
                .unwrap_or_default();
            return Err(cx.refuse(format!("FOR SYSTEM_TIME AS OF {shown}"), PROCESSING_TIME));
        }
        let start = offsets.start(&tokens[solid[s]]);
        let end = offsets.end(&tokens[solid[next - 1]]);
        cuts.push((start, end));
        found.push(Versioned { relation, at });
        s = next;
    }
    let mut stripped = String::with_capacity(sql.len());
    let mut last = 0;
    for (start, end) in cuts {
        // Offsets come from the tokens in order; never step back over text already copied.
        let start = start.max(last);
        let end = end.max(start);
        stripped.push_str(&sql[last..start]);
        stripped.push(' ');
        last = end;
    }
    stripped.push_str(&sql[last..]);
    Ok((stripped, found))
}

/// Byte offsets of the tokenizer's (line, column) locations, both counted from 1 in chars.
struct ByteOffsets {
    /// Per line, the byte offset of each char, and one past the last.
    lines: Vec<Vec<usize>>,
}

impl ByteOffsets {
    fn of(text: &str) -> ByteOffsets {
        let mut lines = vec![Vec::new()];
        for (offset, ch) in text.char_indices() {
            if let Some(line) = lines.last_mut() {
                line.push(offset);
            }
            if ch == '\n' {
                lines.push(Vec::new());
            }
        }
        if let Some(line) = lines.last_mut() {
            line.push(text.len());
        }
        ByteOffsets { lines }
    }

    fn at(&self, line: u64, column: u64) -> usize {
        let line = self.lines.get(line.saturating_sub(1) as usize);
        line.and_then(|l| l.get(column.saturating_sub(1) as usize).copied())
            .or_else(|| line.and_then(|l| l.last().copied()))
            .unwrap_or(0)
    }

    fn start(&self, token: &TokenWithSpan) -> usize {
        self.at(token.span.start.line, token.span.start.column)
    }

    /// Where the token ends (its span's end is the location after it).
    fn end(&self, token: &TokenWithSpan) -> usize {
        self.at(token.span.end.line, token.span.end.column)
    }
}

/// The temporal join of a FROM clause with joins, checked against the job's inputs and the
/// `FOR SYSTEM_TIME AS OF` clauses found in it. `None` when `from` joins nothing.
pub(crate) fn temporal_join(
    cx: &Context,
    from: &TableWithJoins,
    versions: &[Versioned],
) -> Result<Option<TemporalSql>> {
    let stream_names = |relation: &TableFactor| -> Option<(String, Option<String>)> {
        match relation {
            TableFactor::Table { name, alias, .. } => {
                let last = name.0.last().and_then(|p| p.as_ident())?.value.clone();
                Some((last, alias.as_ref().map(|a| a.name.value.clone())))
            }
            _ => None,
        }
    };
    if from.joins.is_empty() {
        if !versions.is_empty() {
            return Err(cx.refuse(
                "FOR SYSTEM_TIME AS OF without a join",
                "it belongs to a table joined to the stream: FROM orders AS o JOIN customers FOR SYSTEM_TIME AS OF o.event_time AS c ON …",
            ));
        }
        return Ok(None);
    }
    let [join] = from.joins.as_slice() else {
        return Err(cx.refuse(
            format!("{} joins", from.joins.len()),
            "a job joins its stream with one table",
        ));
    };
    let Some((left, left_alias)) = stream_names(&from.relation) else {
        return Err(cx.refuse(
            "a subquery or table function joined",
            "join the stream's table by name: FROM orders AS o JOIN customers FOR SYSTEM_TIME AS OF o.event_time AS c ON …",
        ));
    };
    if !left.eq_ignore_ascii_case(cx.table) {
        return Err(cx.refuse(
            format!("FROM {left} JOIN …"),
            format!(
                "the primary stream `{}` comes first, the table it looks up after JOIN",
                cx.table
            ),
        ));
    }
    let Some((right, _)) = stream_names(&join.relation) else {
        return Err(cx.refuse(
            "a subquery or table function joined",
            "join a `[[tables]]` input by name",
        ));
    };
    let Some(input) = cx
        .others
        .iter()
        .find(|i| i.name.eq_ignore_ascii_case(&right))
    else {
        let known: Vec<&str> = cx.others.iter().map(|i| i.name.as_str()).collect();
        return Err(cx.refuse(
            format!("JOIN {right}"),
            if known.is_empty() {
                "the job has no other input to join; declare the table as a `[[tables]]` entry"
                    .to_string()
            } else {
                format!("join one of the job's other inputs ({})", known.join(", "))
            },
        ));
    };
    if input.kind == InputKind::Stream {
        return Err(cx.refuse(
            format!("JOIN {right} (a stream)"),
            "stream-stream joins are not supported yet; declare reference data as a `[[tables]]` entry and join it FOR SYSTEM_TIME AS OF the stream's event time",
        ));
    }
    let Some(version) = versions
        .iter()
        .find(|v| v.relation.eq_ignore_ascii_case(&right))
    else {
        return Err(cx.refuse(
            format!("JOIN {right} without FOR SYSTEM_TIME AS OF"),
            format!(
                "a lookup of the latest value depends on when it ran, which no backfill reproduces; write JOIN {right} FOR SYSTEM_TIME AS OF {}.{}",
                left_alias.as_deref().unwrap_or(&left),
                cx.event_time
            ),
        ));
    };
    if versions.len() > 1 {
        return Err(cx.refuse(
            "several FOR SYSTEM_TIME AS OF clauses",
            "a job joins its stream with one table",
        ));
    }
    let names_the_stream = match version.at.as_slice() {
        [column] => column.eq_ignore_ascii_case(cx.event_time),
        [relation, column] => {
            let stream = left_alias.as_deref().unwrap_or(&left);
            relation.eq_ignore_ascii_case(stream) && column.eq_ignore_ascii_case(cx.event_time)
        }
        _ => false,
    };
    if !names_the_stream {
        return Err(cx.refuse(
            format!("FOR SYSTEM_TIME AS OF {}", version.at.join(".")),
            format!(
                "the lookup time is the stream's event time: FOR SYSTEM_TIME AS OF {}.{}",
                left_alias.as_deref().unwrap_or(&left),
                cx.event_time
            ),
        ));
    }
    let (kind, constraint) = match &join.join_operator {
        JoinOperator::Join(c) | JoinOperator::Inner(c) => (JoinKind::Inner, c),
        JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (JoinKind::Left, c),
        JoinOperator::Right(_) | JoinOperator::RightOuter(_) | JoinOperator::FullOuter(_) => {
            return Err(cx.refuse(
                "RIGHT/FULL temporal join",
                "a table version has no event time of its own to be emitted at; use LEFT JOIN (every stream row, the table's columns null where no version matches) or JOIN",
            ));
        }
        _ => {
            return Err(cx.refuse(
                "this kind of join",
                "a temporal join is JOIN or LEFT JOIN … ON <stream key> = <table key>",
            ));
        }
    };
    if !matches!(constraint, JoinConstraint::On(_)) {
        return Err(cx.refuse(
            "a join without ON (USING, NATURAL, none)",
            "write ON <stream>.<key> = <table>.<key> for each of the table's key fields",
        ));
    }
    Ok(Some(TemporalSql {
        table: input.name.clone(),
        kind,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx<'a>(others: &'a [OtherInput]) -> Context<'a> {
        Context {
            job: "j",
            table: "orders",
            event_time: "event_time",
            others,
        }
    }

    #[test]
    fn the_clause_is_cut_out_exactly_and_recorded() {
        let others = [];
        let sql = "SELECT o.x, c.y FROM orders AS o\n  LEFT JOIN customers FOR SYSTEM_TIME AS OF o.event_time AS c\n  ON o.k = c.k -- é";
        let (stripped, found) = strip_versions(&cx(&others), sql).unwrap();
        assert_eq!(
            stripped,
            "SELECT o.x, c.y FROM orders AS o\n  LEFT JOIN customers   AS c\n  ON o.k = c.k -- é"
        );
        assert_eq!(
            found,
            [Versioned {
                relation: "customers".into(),
                at: vec!["o".into(), "event_time".into()],
            }]
        );
        let (same, none) =
            strip_versions(&cx(&others), "SELECT 'for system_time as of x' FROM t").unwrap();
        assert_eq!(same, "SELECT 'for system_time as of x' FROM t");
        assert!(none.is_empty());
    }

    #[test]
    fn processing_time_lookups_are_refused() {
        let others = [];
        for time in [
            "PROCTIME()",
            "now()",
            "TIMESTAMP '2024-01-01'",
            "a.b.c",
            "o.event_time + INTERVAL '1' HOUR",
        ] {
            let sql =
                format!("SELECT 1 FROM orders o JOIN c FOR SYSTEM_TIME AS OF {time} ON o.k = c.k");
            let err = strip_versions(&cx(&others), &sql).unwrap_err().to_string();
            assert!(err.contains("processing time"), "{time}: {err}");
        }
    }
}
