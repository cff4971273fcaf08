// Redis for the bench's BullMQ peer: what a running Redis persists (CONFIG GET), a private
// redis-server the bench starts itself (append-only file fsynced on every write, on a free port,
// in a temp folder), its command and AOF counters, and the BullMQ side of the peer workload.
import { spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { Queue, Worker } from 'bullmq'
import { Redis } from 'ioredis'
import { IN_FLIGHT } from './peers.mjs'
import { now } from './stats.mjs'

export const MACHINE_REDIS = (() => {
  const url = new URL(process.env.TASK_BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379')
  return { host: url.hostname, port: Number(url.port || 6379) }
})()
export const REDIS_SERVER = process.env.TASK_BENCH_REDIS_SERVER ?? '/usr/bin/redis-server'

/** A client that fails at once instead of retrying (probes and counters). */
async function quickClient ({ host, port }) {
  const client = new Redis({ host, port, lazyConnect: true, connectTimeout: 2000, maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => null })
  let cause = null
  client.on('error', (err) => { cause ??= err })
  try {
    await client.connect()
  } catch (err) {
    client.disconnect()
    throw cause ?? err
  }
  return client
}

const infoField = (info, name) => new RegExp(`^${name}:(.*)$`, 'm').exec(info)?.[1]?.trim() ?? null

/**
 * What the Redis at `connection` keeps on disk: { reachable, reason, version, appendonly, appendfsync, save }.
 * `save` empty and appendonly no: nothing survives a restart.
 */
export async function probeRedis (connection) {
  let client = null
  try {
    client = await quickClient(connection)
    const get = async (key) => (await client.config('GET', key))[1] ?? null
    return { reachable: true, reason: null, version: infoField(await client.info('server'), 'redis_version'), appendonly: await get('appendonly'), appendfsync: await get('appendfsync'), save: await get('save') }
  } catch (err) {
    return { reachable: false, reason: `${err.code ?? ''} ${err.message}`.trim() }
  } finally {
    client?.disconnect()
  }
}

/** Commands processed and AOF bytes so far (to take per-task deltas). */
export async function redisCounters (connection) {
  const client = await quickClient(connection)
  try {
    const stats = await client.info('stats')
    const persistence = await client.info('persistence')
    return { commands: Number(infoField(stats, 'total_commands_processed')), aof_bytes: Number(infoField(persistence, 'aof_current_size') ?? 0) }
  } finally {
    client.disconnect()
  }
}

/** Waits for `promise` at most `ms`; its failure or lateness is ignored (clean-up steps). */
async function within (ms, promise) {
  let timer
  await Promise.race([Promise.resolve(promise).catch(() => {}), new Promise((resolve) => { timer = setTimeout(resolve, ms) })])
  clearTimeout(timer)
}

function freePort () {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

/**
 * A redis-server of our own in `dir`: append-only file fsynced before each write is answered
 * (appendfsync always), no RDB snapshots. Resolves with { host, port, args, stop() } once it
 * answers PING; killed if this process exits first. The caller removes `dir`.
 */
export async function startRedis (dir, bin = REDIS_SERVER) {
  if (!existsSync(bin)) throw new Error(`${bin} not found`)
  const port = await freePort()
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--appendonly', 'yes', '--appendfsync', 'always', '--dir', dir, '--save', '', '--daemonize', 'no', '--logfile', join(dir, 'redis.log')]
  const child = spawn(bin, args, { stdio: 'ignore' })
  let exited = null
  const gone = new Promise((resolve) => child.once('exit', (code, signal) => { exited = signal ?? code; resolve() }))
  child.once('error', (err) => { exited = err.message })
  const kill = () => child.kill('SIGKILL')
  process.once('exit', kill)
  const stop = async () => {
    process.off('exit', kill)
    if (exited !== null) return
    child.kill('SIGTERM')
    const timer = setTimeout(kill, 10_000)
    await gone
    clearTimeout(timer)
  }
  const connection = { host: '127.0.0.1', port }
  const until = now() + 10_000
  for (;;) {
    if (exited !== null) {
      let tail = ''
      try { tail = readFileSync(join(dir, 'redis.log'), 'utf8').trim().split('\n').slice(-2).join(' | ') } catch {}
      await stop()
      throw new Error(`redis-server exited (${exited}) ${tail}`.trim())
    }
    try {
      const client = await quickClient(connection)
      await client.ping()
      client.disconnect()
      break
    } catch (err) {
      if (now() > until) {
        await stop()
        throw new Error(`redis-server on port ${port} did not answer: ${err.message}`)
      }
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }
  return { ...connection, args, stop }
}

/**
 * BullMQ: S addBulk calls of T jobs into a fresh queue, then one Worker with concurrency
 * IN_FLIGHT and a no-op processor, timed until every job's completion has been answered by
 * Redis (the worker's 'completed' event); the queue is obliterated afterwards. Completed jobs
 * are kept (BullMQ's default), as pg-boss keeps its rows.
 */
export async function runBullmq (connection, queueName, S, T, { timeoutMs = 300_000 } = {}) {
  const N = S * T
  const queue = new Queue(queueName, { connection })
  queue.on('error', () => {})
  let worker = null
  try {
    await queue.waitUntilReady()
    let completed = 0
    let finish
    let fail
    const allDone = new Promise((resolve, reject) => { finish = resolve; fail = reject })
    worker = new Worker(queueName, async () => {}, { connection, concurrency: IN_FLIGHT, autorun: false })
    worker.on('completed', () => { if (++completed === N) finish() })
    worker.on('failed', (_job, err) => fail(new Error(`BullMQ job failed: ${err?.message}`)))
    worker.on('error', () => {})
    await worker.waitUntilReady()
    const c0 = await redisCounters(connection)
    const t = now()
    for (let s = 0; s < S; s++) await queue.addBulk(Array.from({ length: T }, (_, k) => ({ name: 'task', data: { session: s, task: k } })))
    worker.run().catch(fail)
    let timer
    await Promise.race([allDone, new Promise((resolve, reject) => { timer = setTimeout(() => reject(new Error(`BullMQ completed ${completed}/${N} in ${timeoutMs} ms`)), timeoutMs) })])
    clearTimeout(timer)
    const ms = now() - t
    const c1 = await redisCounters(connection)
    return { ms, tasks: N, redis_commands: c1.commands - c0.commands, aof_bytes: c1.aof_bytes - c0.aof_bytes }
  } finally {
    // Bounded, so a Redis that went away mid-run cannot hang the bench in its clean-up.
    await within(10_000, worker?.close(true))
    await within(10_000, queue.obliterate({ force: true }))
    await within(10_000, queue.close())
  }
}
