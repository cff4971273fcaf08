// Starting the server children and driving them with autocannon (loopback, bounded by duration).
import { fork } from 'node:child_process'
import { closeSync, openSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import autocannon from 'autocannon'

const CHILD = fileURLToPath(new URL('../server-child.mjs', import.meta.url))

/**
 * Forks a server child (node flags in `execArgv`, e.g. --cpu-prof); resolves with { port, url, stop() } once it listens.
 * `logFile`: the child's stdout (where a `logger: 'production'` app writes its JSON lines) goes to that file.
 */
export function startServer ({ execArgv = [], logFile, ...options }) {
  const out = logFile === undefined ? 'inherit' : openSync(logFile, 'a')
  const child = fork(CHILD, [], { stdio: ['ignore', out, 'inherit', 'ipc'], execArgv })
  if (typeof out === 'number') closeSync(out)
  return new Promise((resolve, reject) => {
    const onExit = (code) => reject(new Error(`server child (${options.kind}) exited with ${code} before listening`))
    child.once('exit', onExit)
    child.once('message', (message) => {
      if (message.type !== 'ready') {
        child.off('exit', onExit)
        reject(new Error(`server child (${options.kind}) failed: ${message.message}`))
        return
      }
      child.off('exit', onExit)
      const url = `http://127.0.0.1:${message.port}`
      resolve({
        port: message.port,
        url,
        child,
        cpu: () => new Promise((resolve) => {
          const onMessage = (m) => { if (m.type === 'cpu') { child.off('message', onMessage); resolve(m.usage) } }
          child.on('message', onMessage)
          child.send({ type: 'cpu' })
        }),
        stop: () => new Promise((resolve) => {
          const timer = setTimeout(() => { child.kill('SIGKILL') }, 15_000)
          child.once('exit', () => { clearTimeout(timer); resolve() })
          child.send({ type: 'stop' })
        })
      })
    })
    child.send({ type: 'start', ...options })
  })
}

/**
 * Waits for processes started at once (start-up is never timed, and a quick run starts about
 * twenty); resolves with them in order. If one fails, the others are stopped and it throws.
 */
export async function allStarted (starting) {
  const settled = await Promise.allSettled(starting)
  const failed = settled.find((s) => s.status === 'rejected')
  if (failed !== undefined) {
    await Promise.all(settled.filter((s) => s.status === 'fulfilled').map((s) => s.value.stop()))
    throw failed.reason
  }
  return settled.map((s) => s.value)
}

/** Server children started at once (allStarted); resolves with { name: server }. */
export async function startServers (optionsByName) {
  const names = Object.keys(optionsByName)
  const servers = await allStarted(names.map((name) => startServer(optionsByName[name])))
  return Object.fromEntries(names.map((name, i) => [name, servers[i]]))
}

/**
 * One autocannon run against `server`; returns req/s (2xx only), latency percentiles (ms),
 * error counts, and the server's CPU time per request (µs).
 */
export async function load (server, options) {
  const before = await server.cpu()
  const result = await cannon({ url: server.url, ...options })
  const after = await server.cpu()
  const cpuUs = (after.user - before.user) + (after.system - before.system)
  return { ...result, server_cpu_us_per_req: cpuUs / Math.max(1, result.requests) }
}

/** One autocannon run; returns req/s (2xx only), latency percentiles (ms) and error counts. */
export function cannon (options) {
  return new Promise((resolve, reject) => {
    // sampleInt 100 ms: autocannon checks for the end of a run once per sample, so short runs end on time.
    autocannon({ connections: 50, pipelining: 1, sampleInt: 100, ...options }, (err, result) => {
      if (err) return reject(err)
      const seconds = Math.max(result.duration, 1e-9)
      resolve({
        rps: result['2xx'] / seconds,
        p50_ms: result.latency.p50,
        p99_ms: result.latency.p99,
        requests: result.requests.total,
        ok: result['2xx'],
        non2xx: result.non2xx,
        errors: result.errors,
        timeouts: result.timeouts,
        duration_s: result.duration
      })
    })
  })
}
