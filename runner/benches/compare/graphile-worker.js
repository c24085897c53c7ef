// One Graphile Worker process for graphile-worker.sh: concurrency 24, batching on, a no-op
// task. Once stopped (SIGTERM), prints when its first job started, when its last one
// completed, and how many it ran.
const { run } = require("graphile-worker");
const { EventEmitter } = require("events");

(async () => {
  const events = new EventEmitter();
  let first = null;
  let last = null;
  let done = 0;
  events.on("job:start", () => {
    if (first === null) first = Date.now();
  });
  events.on("job:success", () => {
    done++;
    last = Date.now();
  });
  const runner = await run({
    connectionString: process.env.GW_URL,
    concurrency: 24,
    noHandleSignals: true,
    pollInterval: 1000,
    events,
    taskList: { echo: async () => {} },
    preset: {
      worker: { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 },
    },
  });
  process.on("SIGTERM", () => runner.stop());
  await runner.promise;
  console.log("STATS " + JSON.stringify({ first, last, done }));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
