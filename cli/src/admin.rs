//! `broadcast stats` and `broadcast queues`: what the broker's admin API reports, as a table
//! for people or as JSON for scripts.

use crate::{EXIT_UNREACHABLE, Exit, print_line};
use clap::Args;
use serde_json::Value;
use std::fmt::Write as _;
use std::time::Duration;

/// Where the admin API is and how to read it.
#[derive(Debug, Args)]
pub(crate) struct AdminArgs {
    /// URL of the broker's admin API.
    #[arg(
        long,
        value_name = "URL",
        env = "BROADCAST_ADMIN",
        default_value = "http://127.0.0.1:7402"
    )]
    pub(crate) admin: String,
    /// Bearer token of the admin API, when it asks for one.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "BROADCAST_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub(crate) admin_token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `broadcast queues`.
#[derive(Debug, Args)]
pub(crate) struct QueuesArgs {
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
    /// Most queues listed (pages of the API are followed up to it).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) limit: u64,
}

/// `GET path` on the admin API, as JSON.
fn get(args: &AdminArgs, path: &str) -> anyhow::Result<Value> {
    let url = format!("{}{path}", args.admin.trim_end_matches('/'));
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let mut request = agent.get(&url);
    if let Some(token) = &args.admin_token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request.call().map_err(|e| match e {
        ureq::Error::StatusCode(401) => Exit {
            status: crate::EXIT_FAILURE,
            message: format!("the admin API at {url} asks for a token (--admin-token)"),
        },
        ureq::Error::StatusCode(code) => Exit {
            status: crate::EXIT_FAILURE,
            message: format!("the admin API at {url} answered {code}"),
        },
        e => Exit {
            status: EXIT_UNREACHABLE,
            message: format!(
                "cannot reach the admin API at {url}: {e} (is the broker running with \
                 --admin-listen? Set the URL with --admin or BROADCAST_ADMIN)"
            ),
        },
    })?;
    let body = response.body_mut().read_to_string()?;
    Ok(serde_json::from_str(&body)?)
}

/// A number as people read it: 1234567 as 1,234,567.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn num(v: &Value) -> String {
    v.as_u64().map_or_else(|| "-".to_owned(), grouped)
}

/// `broadcast stats`.
pub(crate) fn stats(args: &AdminArgs) -> anyhow::Result<u8> {
    let server = get(args, "/v1/server")?;
    if args.json {
        print_line(&server.to_string())?;
        return Ok(0);
    }
    let totals = &server["totals"];
    let mut out = String::new();
    let mut row = |label: &str, value: String| {
        let _ = writeln!(out, "{label:<24} {value}");
    };
    row(
        "server",
        server["server"].as_str().unwrap_or("-").to_owned(),
    );
    row(
        "uptime",
        format!("{:.0} s", server["uptime_secs"].as_f64().unwrap_or(0.0)),
    );
    row(
        "ready",
        if server["ready"] == true { "yes" } else { "no" }.to_owned(),
    );
    row("connections", num(&server["connections"]));
    row("clients", num(&server["clients"]));
    row("sessions", num(&server["sessions"]));
    row("channels", num(&server["channels"]));
    row("queued messages", num(&server["queued_messages"]));
    row("queued bytes", num(&server["queued_bytes"]));
    row("messages published", num(&totals["messages_published"]));
    row("deliveries", num(&totals["deliveries"]));
    row("redeliveries", num(&totals["redeliveries"]));
    row("acks", num(&totals["acks"]));
    if let Some(failures) = totals["delivery_failures"].as_object() {
        let total: u64 = failures.values().filter_map(Value::as_u64).sum();
        row("delivery failures", grouped(total));
        for (reason, n) in failures {
            if n.as_u64().unwrap_or(0) > 0 {
                row(&format!("  {reason}"), num(n));
            }
        }
    }
    row("connections accepted", num(&totals["connections_accepted"]));
    row("frames received", num(&totals["frames_received"]));
    row("frames sent", num(&totals["frames_sent"]));
    print!("{out}");
    Ok(0)
}

/// `broadcast queues`.
pub(crate) fn queues(args: &QueuesArgs) -> anyhow::Result<u8> {
    let mut items: Vec<Value> = Vec::new();
    let mut total = 0;
    let mut after: Option<String> = None;
    while (items.len() as u64) < args.limit {
        let want = (args.limit - items.len() as u64).min(1000);
        let mut path = format!("/v1/queues?limit={want}");
        if let Some(after) = &after {
            path.push_str("&after=");
            path.push_str(&encode_query(after));
        }
        let page = get(&args.admin, &path)?;
        total = page["total"].as_u64().unwrap_or(0);
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    if args.admin.json {
        for item in &items {
            print_line(&item.to_string())?;
        }
        return Ok(0);
    }
    println!(
        "{:<8} {:<32} {:>12} {:>14} {:>10} {:>10}",
        "KIND", "NAME", "MESSAGES", "BYTES", "IN FLIGHT", "CONNECTED"
    );
    for q in &items {
        println!(
            "{:<8} {:<32} {:>12} {:>14} {:>10} {:>10}",
            q["kind"].as_str().unwrap_or("-"),
            q["name"].as_str().unwrap_or("-"),
            num(&q["messages"]),
            num(&q["bytes"]),
            num(&q["in_flight"]),
            if q["connected"] == true { "yes" } else { "no" },
        );
    }
    if total > items.len() as u64 {
        eprintln!(
            "{} of {} queues shown (--limit to see more)",
            items.len(),
            total
        );
    }
    Ok(0)
}

/// Percent-encodes a query value: names may hold `&`, `+`, `#` and other reserved bytes.
fn encode_query(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode_query("client:a&b c"), "client:a%26b%20c");
    }
}
