// 11. The live view's fan-out: N event-stream clients (every session) while tasks complete at a
// steady rate. Delivery latency is from the emission of an event (right after its durable save,
// timed in the server child) to its arrival at each client (timed here; both on this machine's
// clock). Peer: execute throughput with no stream client, against the same with N connected
// (blocks of runs in the order none, with, with, none; three in a full run).
// Also memory per idle stream client, in the server child after a full collection.
// Floor for the delivery latency: a bare node:http server writing frames like ours, at the events
// rate the latency phase had and at TASK_EVENTS_FLUSH_MS's pace, to the same N clients, and doing
// nothing else (bench/server-child.mjs, kind 'bare-events'): what this machine's loopback and the
// clients' process allow before any work of the service.
import { fork } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { join } from 'node:path'
import { cannon, startServer } from '../lib/http.mjs'
import { now } from '../lib/stats.mjs'

const CLIENTS = fileURLToPath(new URL('../stream-clients-child.mjs', import.meta.url))
/** Every this many-th client times its arrivals (100 of 1,000, spread over the server's write order); all count theirs. */
const SAMPLE = 10

/** The stream clients' process; `ask` sends a message and resolves with the answer of the same type. */
function clientsProcess () {
  const child = fork(CLIENTS, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const ask = (message) => new Promise((resolve, reject) => {
    const onMessage = (m) => {
      if (m.type !== message.type && m.type !== 'error') return
      child.off('message', onMessage)
      if (m.type === 'error') reject(new Error(m.message))
      else resolve(m)
    }
    child.on('message', onMessage)
    child.send(message)
  })
  const stop = () => new Promise((resolve) => { child.once('exit', resolve); child.send({ type: 'stop' }) })
  return { ask, stop }
}

async function post (url, path, body) {
  const res = await fetch(`${url}/api/v1/tasks${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  if (!res.ok) throw new Error(`${path}: ${res.status} ${await res.text()}`)
  return res.json()
}

const rssPerClient = (before, after, n) => ({ heap_bytes: (after.heapUsed + after.external - before.heapUsed - before.external) / n, rss_bytes: (after.rss - before.rss) / n })

export async function benchFanout ({ P, row, sections, trackedDir, dropDir, log }) {
  const N = P.fanoutClients
  const RATE = P.fanoutTasksPerS
  const seconds = P.fanoutSeconds
  // Execute throughput is read in blocks of four runs, none, with, with, none (see below).
  const blocks = P.fanoutBlocks
  const throughputRuns = 1 + 4 * blocks
  // Room for every throughput run at 1,500 req/s, over twice what this machine's runs complete
  // (300 to 650 req/s), the latency phase's tasks added. Sessions of 200 tasks, as in earlier
  // stops' runs (a save's cost follows the session's size), and at least 100 of them, so that
  // concurrent executes rarely meet a busy one (409).
  const tasksNeeded = Math.ceil(RATE * seconds * 1.2) + throughputRuns * Math.ceil(P.fanoutThroughputSeconds * 1500)
  const perSession = 200
  const sessions = Math.max(100, Math.ceil(tasksNeeded / perSession))
  const dir = trackedDir('fanout')
  // Logging as `npm start` does, to a file on the same disk.
  const logs = trackedDir('fanout-logs')
  const server = await startServer({ kind: 'app', dir, logger: 'production', logFile: join(logs, 'server.log'), execArgv: ['--expose-gc'], recordEventTimes: true, config: { ...P.fanoutConfig, TASK_EVENTS_MAX_CLIENTS: N + 10, TASK_EVENTS_HEARTBEAT_MS: 3_600_000, ...(P.fanoutFlushMs !== undefined && { TASK_EVENTS_FLUSH_MS: P.fanoutFlushMs }) } })
  const clients = clientsProcess()
  try {
    const instructions = Array.from({ length: perSession }, (_, i) => `${i + 1}. think about step ${i}`).join('\n')
    for (let s = 0; s < sessions; s++) await post(server.url, '/create', { session_id: `fan_${s}`, instructions })

    // Throughput with no listener first, then the same with N connected.
    const execute = async () => cannon({
      url: `${server.url}/api/v1/tasks/execute`,
      connections: 10,
      duration: P.fanoutThroughputSeconds,
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      requests: [{ setupRequest: (req) => ({ ...req, body: JSON.stringify({ session_id: `fan_${Math.floor(Math.random() * sessions)}` }) }) }]
    })
    // In blocks of none, with, with, none (the latency phase between the first block's two
    // with): every execute makes the sessions' files bigger, so whichever side always ran second
    // would save bigger files; the order cancels that drift. This VM's fsyncs wander by a third
    // between runs seconds apart, so one block says little: the ratio is of the sums of each side
    // over every block, and each block's own ratio is logged to show the spread.
    // A warm-up first (JIT, page cache, the sessions' files), not counted.
    await execute()
    const none = []
    const loaded = []
    let perClient = null
    let loadedCpuShare = null
    let latency = null
    for (let block = 0; block < blocks; block++) {
      none.push(await execute())
      const idleBefore = await memOf(server)
      await clients.ask({ type: 'connect', port: server.port, n: N, sample: SAMPLE })
      await new Promise((resolve) => setTimeout(resolve, 200))
      if (block === 0) {
        const idleAfter = await memOf(server)
        perClient = rssPerClient(idleBefore, idleAfter, N)
        log(`  ${N} idle clients: ${(perClient.heap_bytes / 1024).toFixed(1)} KB heap+external, ${(perClient.rss_bytes / 1024).toFixed(1)} KB RSS each`)
      }
      const loadedCpu0 = await server.cpu()
      loaded.push(await execute())
      const loadedCpu1 = await server.cpu()
      loadedCpuShare ??= ((loadedCpu1.user - loadedCpu0.user) + (loadedCpu1.system - loadedCpu0.system)) / 1e6 / loaded.at(-1).duration_s
      if (block === 0) latency = await latencyPhase(server, clients, sessions, RATE, seconds)
      loaded.push(await execute())
      await clients.ask({ type: 'disconnect' })
      // The server has seen every stream close before the next run without clients.
      await new Promise((resolve) => setTimeout(resolve, 500))
      none.push(await execute())
      const [a, b, c, d] = [none.at(-2), loaded.at(-2), loaded.at(-1), none.at(-1)].map((run) => run.rps)
      log(`  block ${block + 1}: execute req/s without clients ${a.toFixed(0)}, ${d.toFixed(0)}; with ${N}: ${b.toFixed(0)}, ${c.toFixed(0)}; ratio ${((b + c) / (a + d)).toFixed(3)}`)
    }
    const rps = (runs) => runs.reduce((sum, run) => sum + run.ok, 0) / runs.reduce((sum, run) => sum + run.duration_s, 0)
    const executeWith = rps(loaded)
    const executeWithout = rps(none)
    const { measured, times, cpuShare, elapsed, sent } = latency
    const floor = await floorPhase(clients, N, times.length / elapsed, P.fanoutFlushMs ?? P.fanoutConfig?.TASK_EVENTS_FLUSH_MS ?? 25, seconds)
    log(`  floor (a bare server writing the same events to ${N} clients every ${floor.pace_ms} ms, nothing else): p50 ${floor.p50.toFixed(2)} ms, p99 ${floor.p99.toFixed(2)} ms over ${floor.deliveries} timed deliveries; its CPU ${(floor.cpuShare * 100).toFixed(0)}% of a core, the clients' process ${(floor.clientsCpuShare * 100).toFixed(0)}%`)
    const expected = times.length * measured.timed_clients
    const result = {
      clients: N,
      // Settings given with --fanout-flush-ms and --fanout-config (the defaults otherwise).
      settings: { ...P.fanoutConfig, ...(P.fanoutFlushMs !== undefined && { TASK_EVENTS_FLUSH_MS: P.fanoutFlushMs }) },
      tasks_per_s: sent / elapsed,
      events_per_s: times.length / elapsed,
      timed_clients: measured.timed_clients,
      deliveries: measured.deliveries,
      deliveries_expected: expected,
      events_counted_all_clients: measured.counted,
      events_expected_all_clients: times.length * N,
      latency_p50_ms: measured.p50,
      latency_p99_ms: measured.p99,
      latency_max_ms: measured.max,
      floor_latency_p50_ms: floor.p50,
      floor_latency_p99_ms: floor.p99,
      floor_server_cpu_share: floor.cpuShare,
      floor_clients_cpu_share: floor.clientsCpuShare,
      server_cpu_share: cpuShare,
      clients_cpu_share: measured.cpu_us / 1e6 / elapsed,
      server_cpu_share_execute_with_clients: loadedCpuShare,
      execute_rps_no_clients: executeWithout,
      execute_rps_with_clients: executeWith,
      // In run order: each block's two without clients, and its two with.
      execute_runs: { blocks, none: none.map((run) => run.rps), with_clients: loaded.map((run) => run.rps) },
      // Not 2xx: mostly 409, an execute meeting one still running on its session (10 connections over 100 sessions).
      execute_not_2xx: [...none, ...loaded].reduce((sum, run) => sum + run.non2xx + run.errors + run.timeouts, 0),
      idle_client_bytes: perClient
    }
    sections.fanout = result
    log(`  p50 ${result.latency_p50_ms.toFixed(2)} ms, p99 ${result.latency_p99_ms.toFixed(2)} ms over ${measured.deliveries}/${expected} timed deliveries (${measured.timed_clients} clients); ${measured.counted}/${times.length * N} events counted on all ${N}; server CPU ${(cpuShare * 100).toFixed(0)}% of a core, the clients' process ${(result.clients_cpu_share * 100).toFixed(0)}%`)
    const allDelivered = measured.deliveries === expected && measured.counted === times.length * N
    row(`event delivery p99, ${N} stream clients, ${Math.round(result.tasks_per_s)} tasks/s`, { ours: result.latency_p99_ms, floor: floor.p99, floorLabel: 'a bare server writing the same events to the same clients, nothing else', unit: 'ms', ratio: result.latency_p99_ms / floor.p99, ratioOf: 'ours / floor', goal: '<= 50 ms, every event delivered', met: result.latency_p99_ms <= 50 && allDelivered })
    log(`  execute over ${blocks} block(s): ${executeWithout.toFixed(0)} req/s without clients, ${executeWith.toFixed(0)} with ${N}; ${result.execute_not_2xx} not 2xx (409: the session busy)`)
    row(`execute with ${N} stream clients`, { ours: executeWith, floor: executeWithout, floorLabel: `with none (${blocks} block(s) of none, with, with, none)`, unit: 'req/s', ratio: executeWith / executeWithout, ratioOf: 'with / without', goal: '>= 0.8x', met: executeWith / executeWithout >= 0.8 })
    row('memory per idle stream client (heap+external)', { ours: perClient.heap_bytes / 1024, unit: 'KB', goal: '<= 20 KB', met: perClient.heap_bytes <= 20 * 1024 })
  } finally {
    await clients.stop()
    await server.stop()
    dropDir(dir)
    dropDir(logs)
  }
}

/**
 * Steady load with the clients connected: `rate` executes a second (each completes one task),
 * spread evenly, for `seconds`; then each timed client's arrivals against the server's emission times.
 */
async function latencyPhase (server, clients, sessions, rate, seconds) {
  // Quiet first, so that no event falls between the clients' reset and the server's.
  await new Promise((resolve) => setTimeout(resolve, 500))
  await clients.ask({ type: 'reset' })
  await eventTimes(server)
  const cpu0 = await server.cpu()
  const t0 = now()
  let sent = 0
  const inflight = []
  while (now() - t0 < seconds * 1000) {
    const due = Math.floor(((now() - t0) / 1000) * rate)
    while (sent < due) {
      inflight.push(post(server.url, '/execute', { session_id: `fan_${sent % sessions}` }))
      sent++
    }
    await new Promise((resolve) => setTimeout(resolve, 2))
  }
  await Promise.all(inflight)
  await new Promise((resolve) => setTimeout(resolve, 300))
  const elapsed = (now() - t0) / 1000
  const cpu1 = await server.cpu()
  const times = await eventTimes(server)
  const measured = await clients.ask({ type: 'latency', times })
  const cpuShare = ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / 1e6 / elapsed
  return { measured, times, cpuShare, elapsed, sent }
}

/** Frames as the app writes them for an execute (task.started, progress, task.completed, progress), without their ids. */
const FLOOR_FRAMES = (() => {
  const progress = (completed) => ({ session_id: 'fan_1', total: 200, completed, failed: 0, pending: 200 - completed, in_progress: 0, all_done: false, percentage: completed / 2, running: false, updated_at: '2026-12-06T15:00:00.000Z' })
  const task = { session_id: 'fan_1', task_id: '1796137200-a1b2c3d4e5-3' }
  return [
    ['task.started', { ...task, status: 'InProgress' }],
    ['progress', { ...progress(2), in_progress: 1, pending: 197, running: true }],
    ['task.completed', { ...task, status: 'Completed' }],
    ['progress', progress(3)]
  ].map(([name, data]) => `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`)
})()

/** The floor: the bare-events server, the same clients, `rate` events a second for `seconds`, written every `paceMs`. */
async function floorPhase (clients, n, rate, paceMs, seconds) {
  const server = await startServer({ kind: 'bare-events' })
  try {
    await clients.ask({ type: 'connect', port: server.port, n, sample: SAMPLE })
    await new Promise((resolve) => setTimeout(resolve, 500))
    await clients.ask({ type: 'reset' })
    await eventTimes(server)
    const cpu0 = await server.cpu()
    const t0 = now()
    await new Promise((resolve, reject) => {
      const onMessage = (m) => {
        if (m.type !== 'emitted' && m.type !== 'error') return
        server.child.off('message', onMessage)
        if (m.type === 'error') reject(new Error(`floor server failed: ${m.message}`))
        else resolve()
      }
      server.child.on('message', onMessage)
      server.child.send({ type: 'emit', rate, paceMs, seconds, frames: FLOOR_FRAMES })
    })
    await new Promise((resolve) => setTimeout(resolve, 300))
    const elapsed = (now() - t0) / 1000
    const cpu1 = await server.cpu()
    const measured = await clients.ask({ type: 'latency', times: await eventTimes(server) })
    await clients.ask({ type: 'disconnect' })
    return { pace_ms: paceMs, p50: measured.p50, p99: measured.p99, deliveries: measured.deliveries, cpuShare: ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / 1e6 / elapsed, clientsCpuShare: measured.cpu_us / 1e6 / elapsed }
  } finally {
    await server.stop()
  }
}

function memOf (server) {
  return new Promise((resolve) => {
    const onMessage = (m) => { if (m.type === 'mem') { server.child.off('message', onMessage); resolve(m.usage) } }
    server.child.on('message', onMessage)
    server.child.send({ type: 'mem' })
  })
}

function eventTimes (server) {
  return new Promise((resolve) => {
    const onMessage = (m) => { if (m.type === 'event-times') { server.child.off('message', onMessage); resolve(m.times) } }
    server.child.on('message', onMessage)
    server.child.send({ type: 'event-times' })
  })
}
