//! The admin API from the command line: `edgecache status`, `edgecache purge ...` and
//! `edgecache reload` read the admin address and token from the config file, call the running
//! node, and print a short summary (or the JSON answer).

use std::time::Duration;

use serde_json::Value;

use crate::config::Config;

/// How long a command waits for the node.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What to ask the running node.
#[derive(Debug, Clone)]
pub enum Command {
    /// `GET /status`.
    Status,
    /// `POST /reload`.
    Reload,
    /// `POST /purge` with this body (the admin API's JSON).
    Purge(Value),
}

/// The answer printed for `command` (a summary, or the JSON when `json`), or why it failed.
pub fn run(config: &Config, command: &Command, json: bool) -> Result<String, String> {
    let admin = config.admin.as_ref().ok_or_else(|| {
        format!(
            "{}: no [admin] section: the admin API is off, so there is nothing to ask",
            config.source.display()
        )
    })?;
    let base = format!("http://{}", admin.listen);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start: {e}"))?;
    let answer = runtime.block_on(call(&base, &admin.token, command))?;
    Ok(if json {
        serde_json::to_string_pretty(&answer).unwrap_or_default()
    } else {
        summary(command, &answer)
    })
}

async fn call(base: &str, token: &str, command: &Command) -> Result<Value, String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let request = match command {
        Command::Status => client.get(format!("{base}/status")),
        Command::Reload => client.post(format!("{base}/reload")),
        Command::Purge(body) => client.post(format!("{base}/purge")).body(body.to_string()),
    };
    let answer = request
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("cannot reach the admin API at {base}: {e} (is edgecache running?)"))?;
    let status = answer.status();
    let text = answer.text().await.map_err(|e| e.to_string())?;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if status == 401 {
        return Err(format!(
            "the admin API at {base} refused the token of this config file"
        ));
    }
    if !status.is_success() {
        let message = value["error"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| value.to_string());
        return Err(format!("{status}: {message}"));
    }
    Ok(value)
}

/// A few human lines for the answer to `command`.
fn summary(command: &Command, answer: &Value) -> String {
    match command {
        Command::Status => status_summary(answer),
        Command::Reload => format!("config reloaded: version {}", answer["version"]),
        Command::Purge(_) => purge_summary(answer),
    }
}

fn status_summary(s: &Value) -> String {
    let cache = &s["cache"];
    let mut lines = vec![
        format!(
            "node {} · edgecache {} · up {} · config version {}",
            s["node"].as_str().unwrap_or("?"),
            s["version"].as_str().unwrap_or("?"),
            humantime::format_duration(Duration::from_secs(
                s["uptime_seconds"].as_f64().unwrap_or(0.0) as u64
            )),
            s["config"]["version"],
        ),
        format!(
            "cache: {} entries, {:.1} MiB, hit ratio {:.1} % ({} hits of {} lookups), {} evicted",
            cache["entries"],
            cache["bytes"].as_f64().unwrap_or(0.0) / 1_048_576.0,
            cache["hit_ratio"].as_f64().unwrap_or(0.0) * 100.0,
            cache["hits"],
            cache["lookups"],
            cache["evictions"],
        ),
    ];
    for site in s["sites"].as_array().into_iter().flatten() {
        let hosts: Vec<&str> = site["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let name = if hosts.is_empty() {
            "(default)".to_string()
        } else {
            hosts.join(", ")
        };
        let origins: Vec<String> = site["origins"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| {
                let state = if o["healthy"] == true { "up" } else { "DOWN" };
                format!("{} {state}", o["addr"].as_str().unwrap_or("?"))
            })
            .collect();
        lines.push(format!("site {name}: {}", origins.join(", ")));
    }
    if let Some(cluster) = s.get("cluster") {
        let peers: Vec<String> = cluster["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{} {}",
                    p["id"].as_str().unwrap_or("?"),
                    if p["healthy"] == true { "up" } else { "DOWN" }
                )
            })
            .collect();
        lines.push(format!(
            "cluster: node {}, ring {}, peers {}",
            cluster["node"].as_str().unwrap_or("?"),
            cluster["ring_fingerprint"].as_str().unwrap_or("?"),
            peers.join(", ")
        ));
    }
    lines.join("\n")
}

fn purge_summary(answer: &Value) -> String {
    let mode = if answer["soft"] == true {
        "marked stale"
    } else {
        "deleted"
    };
    let mut lines = vec![format!("purged: {} entries {mode}", answer["purged"])];
    for peer in answer["peers"].as_array().into_iter().flatten() {
        let node = peer["node"].as_str().unwrap_or("?");
        match peer["ok"] == true {
            true => lines.push(format!(
                "  peer {node}: {} entries ({:.1} ms)",
                peer["purged"],
                peer["ms"].as_f64().unwrap_or(0.0)
            )),
            false => lines.push(format!(
                "  peer {node}: not acknowledged ({}), retried in the background",
                peer["error"].as_str().unwrap_or("?")
            )),
        }
    }
    lines.join("\n")
}
