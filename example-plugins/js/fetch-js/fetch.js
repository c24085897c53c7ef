// fetch-js: GETs the payload's `url` with the global `fetch` that componentize-js provides
// (over the runner's wasi:http) and returns the status and the body's size. A 5xx reply or a
// failed request retries the job; a request the runner refuses fails it. The manifest beside
// the plugin (`fetch-js.toml`) grants the hosts: `[http] allowed_hosts = ["https://example.com"]`.
//
// `run` is async: componentize-js runs the event loop until the promise it returns settles.
import { log } from 'jobrunner:plugin/host@0.1.0';

const jobError = (tag, message) => Object.assign(new Error(message), { tag, val: message });

export async function run(job) {
  const { url } = JSON.parse(job.payload);
  if (typeof url !== 'string') {
    throw jobError('fail', 'payload: expected {"url": "..."}');
  }
  let response;
  try {
    response = await fetch(url);
  } catch (error) {
    // fetch reports every failure as a TypeError; the runner's log line says which it was.
    throw jobError('retry', `request failed: ${error.message}`);
  }
  const body = await response.arrayBuffer();
  if (response.status >= 500) {
    throw jobError('retry', `server error: status ${response.status}`);
  }
  log('info', `fetched ${body.byteLength} bytes, status ${response.status}`);
  return JSON.stringify({ status: response.status, bytes: body.byteLength });
}
