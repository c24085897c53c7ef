// review-reminder in JavaScript: the reference job (its contract: ../../review-reminder.md).
//
// componentize-js calls the exported `run` once per job, in a fresh instance. Returning a
// string completes the job with that JSON result (`undefined`: no result). Throwing a value
// shaped like the WIT `job-error` variant, `{ tag: 'retry' | 'fail', val: message }` (the
// `JobError` class below), is the job's error. Anything else thrown (an Error, a string)
// traps the instance: the runner retries the job like a crash, and keeps what was thrown in
// the attempt's error.
import { log } from 'jobrunner:plugin/host@0.1.0';

class JobError extends Error {
  constructor(tag, message) {
    super(message);
    this.tag = tag; // the variant case: 'retry' or 'fail'
    this.val = message; // its payload
  }
}

const retry = (message) => new JobError('retry', message);
const fail = (message) => new JobError('fail', message);

class InvalidPayload extends Error {}

export function run(job) {
  let request;
  try {
    request = parse(JSON.parse(job.payload));
  } catch (error) {
    if (error instanceof InvalidPayload || error instanceof SyntaxError) {
      throw fail(`invalid payload: ${error.message}`);
    }
    throw error;
  }
  const { user, pullRequests, simulate } = request;
  if (user.trim() === '') throw fail('user is empty');
  if (simulate === 'outage') throw retry('reminder service unavailable (simulated outage)');
  if (simulate === 'crash') throw new Error('simulated crash');
  if (simulate !== undefined && simulate !== null) {
    throw fail(`invalid payload: simulate: unknown value ${JSON.stringify(simulate)}`);
  }

  // Oldest first; equal ages keep the order they came in (Array.prototype.sort is stable).
  const sorted = [...pullRequests].sort((a, b) => b.age_days - a.age_days);
  const text = message(user, sorted);
  log('info', text);
  return JSON.stringify({ user, count: sorted.length, message: text });
}

function parse(payload) {
  if (!isObject(payload)) throw new InvalidPayload('expected an object');
  const user = field(payload, 'user', isString, 'a string');
  const prs = field(payload, 'pull_requests', Array.isArray, 'an array');
  const pullRequests = prs.map((pr, i) => {
    const where = `pull_requests[${i}]`;
    if (!isObject(pr)) throw new InvalidPayload(`${where}: expected an object`);
    return {
      title: field(pr, 'title', isString, 'a string', where),
      url: field(pr, 'url', isString, 'a string', where),
      age_days: field(pr, 'age_days', isAge, 'a non-negative integer', where),
    };
  });
  return { user, pullRequests, simulate: payload.simulate };
}

function field(object, name, isKind, expected, where) {
  const path = where ? `${where}.${name}` : name;
  if (!(name in object)) throw new InvalidPayload(`missing field \`${path}\``);
  if (!isKind(object[name])) throw new InvalidPayload(`${path}: expected ${expected}`);
  return object[name];
}

const isObject = (v) => typeof v === 'object' && v !== null && !Array.isArray(v);
const isString = (v) => typeof v === 'string';
const isAge = (v) => Number.isInteger(v) && v >= 0 && v <= 0xffffffff;

function message(user, pullRequests) {
  const n = pullRequests.length;
  if (n === 0) return `Hi ${user}, no pull requests are waiting for your review.`;
  const noun = n === 1 ? 'pull request is' : 'pull requests are';
  const lines = pullRequests.map(
    (pr) => `- ${pr.title} (${pr.age_days} ${pr.age_days === 1 ? 'day' : 'days'}) ${pr.url}`,
  );
  return [`Hi ${user}, ${n} ${noun} waiting for your review:`, ...lines].join('\n');
}
