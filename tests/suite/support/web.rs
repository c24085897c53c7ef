//! Talking to a runner's web listener: plain HTTP requests (hyper's client), Prometheus text
//! read back, and a headless Chromium driven through chromedriver (WebDriver, fantoccini).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::process::{Child, Command};

use super::eventually;
use super::live::Live;

/// A response: status, headers, body.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// Sends one request to the listener at `base` (`http://127.0.0.1:PORT`).
pub async fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let client: HttpClient<HttpConnector, Full<Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    if body.is_some() {
        builder = builder.header("content-type", "application/x-www-form-urlencoded");
    }
    let request = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .expect("the listener answers within 20 s")
        .expect("the request reaches the listener");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the body arrives").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// GET `url`.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    request(Method::GET, url, headers, None).await
}

/// The listener's base URL (`http://127.0.0.1:PORT`), as the runner logged it.
pub async fn base_url(live: &Live) -> String {
    let event = live
        .event("dashboard, /metrics and health checks listening", |_| true)
        .await;
    event["url"]
        .as_str()
        .expect("the line has the url")
        .trim_end_matches('/')
        .to_owned()
}

/// The value of the sample of `name` whose labels include every pair of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(series, _)| {
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, value)| value.parse().expect("a sample's value is a number"))
}

/// A headless Chromium under chromedriver, and a WebDriver session on it.
pub struct Browser {
    pub client: Client,
    _driver: Child,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a session.
    pub async fn start() -> Browser {
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let driver = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts (tests/run installs chromium and chromium-driver)");
        let capabilities = serde_json::json!({
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1360,1000",
                         "--no-proxy-server", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync"],
            }
        });
        let capabilities = capabilities.as_object().unwrap().clone();
        let webdriver = format!("http://127.0.0.1:{port}");
        let client = eventually(
            "chromedriver accepts a session",
            Duration::from_secs(30),
            || {
                let capabilities = capabilities.clone();
                let webdriver = webdriver.clone();
                async move {
                    ClientBuilder::new(HttpConnector::new())
                        .capabilities(capabilities)
                        .connect(&webdriver)
                        .await
                        .ok()
                }
            },
        )
        .await;
        Browser {
            client,
            _driver: driver,
        }
    }

    /// Loads `url`.
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The text of the first element matching `css`, if there is one.
    pub async fn try_text(&self, css: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.text().await.ok()
    }

    /// The text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        let element = self.client.find(Locator::Css(css)).await;
        element
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    /// Clicks the first element matching `locator`, and waits until the page it submits or
    /// links to has replaced this one and loaded.
    pub async fn navigate_by(&self, locator: Locator<'_>) {
        let page = self.client.find(Locator::Css("html")).await.unwrap();
        let element = self.client.find(locator).await;
        let element = element.unwrap_or_else(|e| panic!("{locator:?}: {e}"));
        element.click().await.unwrap();
        let deadline = Duration::from_secs(30);
        eventually("the next page", deadline, || async {
            // The old page's element is stale once the new page replaced it.
            page.tag_name().await.is_err().then_some(())
        })
        .await;
        eventually("the next page to load", deadline, || async {
            let state = self.client.execute("return document.readyState", vec![]);
            (state.await.ok()? == "complete").then_some(())
        })
        .await;
    }

    /// [`Browser::navigate_by`] the element matching `css`.
    pub async fn click(&self, css: &str) {
        self.navigate_by(Locator::Css(css)).await;
    }

    /// Chooses `value` in the first `<select>` matching `css`.
    pub async fn select(&self, css: &str, value: &str) {
        let element = self.client.find(Locator::Css(css)).await;
        let select = element.unwrap_or_else(|e| panic!("{css}: {e}"));
        select.select_by_value(value).await.unwrap();
    }

    /// Saves a screenshot of the current page as `target/screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = screenshots();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

/// Where screenshots go: `target/screenshots`.
pub fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots")
}

fn chromedriver() -> String {
    std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into())
}

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// A `runner dashboard` process on a test's database, listening on a port the OS chose.
pub struct Dashboard {
    _process: super::process::Process,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Dashboard {
    /// Starts `runner dashboard --http 127.0.0.1:0` with `args` added.
    pub async fn start(db: &super::TestDb, args: &[&str]) -> Dashboard {
        let mut all = vec!["dashboard", "--http", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut command = super::process::runner(&all);
        command.env("DATABASE_URL", db.url());
        let process = super::process::Process::spawn(command);
        let line = process
            .wait_for_output("dashboard: http://", Duration::from_secs(60))
            .await;
        let base = line
            .trim()
            .trim_start_matches("dashboard: ")
            .trim_end_matches('/')
            .to_owned();
        Dashboard {
            _process: process,
            base,
        }
    }
}

/// The CSRF token a page's forms carry.
pub fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("the page has a form with a CSRF token");
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}
