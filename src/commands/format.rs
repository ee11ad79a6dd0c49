//! `--format` of the lists (`ps`, `images`), as docker takes it: a Go template rendered
//! once per row (`{{.Names}}`, `{{.ID}}\t{{.Status}}`), `json` for `{{json .}}`, and
//! `table TEMPLATE` for aligned columns under a header row.

use serde_json::Value;

use crate::template::Template;

pub struct RowFormat {
    template: Template,
    table: bool,
}

impl RowFormat {
    /// A list's `--format` argument, parsed (None without one, or for `table` alone).
    pub fn from_arg(arg: Option<&str>) -> anyhow::Result<Option<RowFormat>> {
        Ok(arg.map(RowFormat::parse).transpose()?.flatten())
    }

    /// None for `table` alone: the list's own table.
    pub fn parse(text: &str) -> anyhow::Result<Option<RowFormat>> {
        let (table, body) = match text.strip_prefix("table") {
            Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => {
                (true, rest.trim_start())
            }
            _ => (false, text),
        };
        if table && body.is_empty() {
            return Ok(None);
        }
        let body = if body == "json" { "{{json .}}" } else { body };
        // docker's templates take \t and \n as written on a command line
        let body = body.replace("\\t", "\t").replace("\\n", "\n");
        Ok(Some(RowFormat {
            template: Template::parse(&body)?,
            table,
        }))
    }

    /// Prints one line per row; a table gets `header` (the row's fields named as
    /// docker's column titles) first, and its columns (split at tabs) aligned.
    pub fn print(&self, header: &Value, rows: &[Value]) -> anyhow::Result<()> {
        if !self.table {
            for row in rows {
                println!("{}", self.template.render(row)?);
            }
            return Ok(());
        }
        let mut lines = vec![self.template.render(header)?];
        for row in rows {
            lines.push(self.template.render(row)?);
        }
        let cells: Vec<Vec<&str>> = lines.iter().map(|l| l.split('\t').collect()).collect();
        let columns = cells.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for row in &cells {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        for row in &cells {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}   ", width = widths[i]));
                }
            }
            println!("{}", line.trim_end());
        }
        Ok(())
    }
}
