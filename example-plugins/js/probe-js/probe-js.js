// probe-js: config, secrets and follow-up jobs from JavaScript, for the tests and as an
// example. The payload `{"read": ["key", ...], "enqueue": [{"job_type", "payload",
// "unique_key", "delay_ms"}, ...]}` reads each key through wasi:config (the result says the
// length of each value, never the value) and keeps each follow-up; the result is
// `{"read": {"key": length or null}, "enqueued": [null or the refusal, ...]}`.
import { get } from 'wasi:config/store@0.2.0-rc.1';
import { enqueue } from 'jobrunner:plugin/jobs@0.1.0';

// A config value or granted secret, or null if the plugin is not granted one.
function config(key) {
  return get(key) ?? null;
}

// Keeps a follow-up, enqueued if this attempt completes; throws the runner's refusal as
// `{tag: 'not-allowed' | 'invalid' | 'limit-reached', val: reason}`.
function followUp(jobType, payload, { uniqueKey, delayMs, priority, maxAttempts } = {}) {
  const options = {
    runAt: undefined,
    delayMs: delayMs === undefined ? undefined : BigInt(delayMs),
    priority,
    uniqueKey,
    maxAttempts,
  };
  try {
    enqueue(jobType, JSON.stringify(payload), options);
  } catch (error) {
    throw error.payload ?? error;
  }
}

export function run(job) {
  const { read = [], enqueue: wanted = [] } = JSON.parse(job.payload);
  const values = Object.fromEntries(read.map((key) => [key, config(key)?.length ?? null]));
  const enqueued = wanted.map((f) => {
    try {
      followUp(f.job_type, f.payload, { uniqueKey: f.unique_key, delayMs: f.delay_ms });
      return null;
    } catch (refusal) {
      return `${refusal.tag}: ${refusal.val}`;
    }
  });
  return JSON.stringify({ read: values, enqueued });
}
