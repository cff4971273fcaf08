/**
 * The compiled server (dist/server.js) as a child process, for the real-process tests:
 * spawned on a free port with an explicit environment and cwd, waited for on /ready (bounded,
 * with the child's output on failure), stopped with a signal (bounded), and driven over HTTP.
 * Not a *.test.ts file: tap does not run it, the test files import it.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, readFile, readdir, readlink, rm } from 'node:fs/promises'
import { createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import type { TestContext } from './helper.js'
import { node } from './node-child.js'

export const SERVER = fileURLToPath(new URL('../server.js', import.meta.url))
/** Readiness is waited for generously (a loaded 2-core CI box); behaviour is not timed. */
export const READY_TIMEOUT_MS = 30_000
export const EXIT_TIMEOUT_MS = 30_000

export interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
}

export interface ServerProcess {
  readonly child: ChildProcess
  readonly port: number
  readonly base: string
  readonly stdout: () => string
  readonly stderr: () => string
  /** Settles once the process has exited and its output is fully read. */
  readonly exited: Promise<Exit>
  /** null while running. */
  readonly exit: () => Exit | null
  /** Sends the signal (if any, and if still running) and waits for the exit, bounded; throws (after a SIGKILL) past `ms`. */
  readonly stop: (signal: NodeJS.Signals | null, ms?: number) => Promise<Exit>
  /** Resolves true once a stdout line satisfies `match`, false if the process exits first or after `ms`. */
  readonly waitForLine: (match: (line: string) => boolean, ms: number) => Promise<boolean>
}

/**
 * The only variables a child sees: nothing leaks from the test runner (NODE_OPTIONS, TASK_*, ...).
 * `vars` are added to, or override, the defaults.
 */
export function baseEnv (vars: Record<string, string> = {}): Record<string, string> {
  return { PATH: process.env.PATH ?? '/usr/bin:/bin', HOST: '127.0.0.1', LOG_LEVEL: 'info', TASK_SHUTDOWN_GRACE_MS: '2000', ...vars }
}

/** The promise's value, or null after `ms`; the timer never outlives the promise. */
export async function within<T> (promise: Promise<T>, ms: number): Promise<T | null> {
  const timer = new AbortController()
  try {
    return await Promise.race([promise, sleep(ms, null, { signal: timer.signal })])
  } finally {
    timer.abort()
  }
}

/** A port that was free on 127.0.0.1 when asked (it may be taken again before it is used). */
export async function freePort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.unref()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo
      server.close(() => resolve(port))
    })
  })
}

/** The process's state and the tail of its output, for failure messages. */
export function describe (server: ServerProcess): string {
  const exit = server.exit()
  const state = exit === null ? 'still running' : `exited code=${exit.code} signal=${exit.signal}`
  return `server ${server.base} (${state})\n--- stderr ---\n${server.stderr().slice(-4000)}\n--- stdout (tail) ---\n${server.stdout().slice(-4000)}`
}

/** The exit within `ms`, or null: then the process is killed (SIGKILL) and reaped. */
export async function exitWithin (server: ServerProcess, ms: number): Promise<Exit | null> {
  const exit = await within(server.exited, ms)
  if (exit === null) {
    server.child.kill('SIGKILL')
    await server.exited
  }
  return exit
}

/** Spawns the server with exactly `env` (its PORT, if any, is the port used) in `cwd`, waiting for nothing. */
export function spawnServer (env: Record<string, string>, cwd: string): ServerProcess {
  const child = spawn(...node([SERVER]), { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  let exit: Exit | null = null
  const lineWaiters = new Set<() => void>()
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    out += chunk
    for (const check of lineWaiters) check()
  })
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { err += chunk })
  const exited = new Promise<Exit>((resolve) => {
    // 'close' (not 'exit'): every byte of stdout/stderr has been read by then.
    child.once('close', (code, signal) => {
      exit = { code, signal }
      resolve(exit)
    })
    child.once('error', (error) => {
      err += `\n[spawn error] ${error.message}`
      exit = { code: null, signal: null }
      resolve(exit)
    })
  })
  const waitForLine = async (match: (line: string) => boolean, ms: number): Promise<boolean> => {
    let check = (): void => {}
    const seen = new Promise<boolean>((resolve) => {
      check = () => { if (out.split('\n').some(match)) resolve(true) }
    })
    lineWaiters.add(check)
    check()
    try {
      return (await within(Promise.race([seen, exited.then(() => out.split('\n').some(match))]), ms)) ?? false
    } finally {
      lineWaiters.delete(check)
    }
  }
  const port = Number(env.PORT)
  const server: ServerProcess = {
    child,
    port,
    base: `http://127.0.0.1:${port}`,
    stdout: () => out,
    stderr: () => err,
    exited,
    exit: () => exit,
    stop: async (signal, ms = EXIT_TIMEOUT_MS) => {
      if (exit === null && signal !== null) child.kill(signal)
      const result = await exitWithin(server, ms)
      if (result === null) throw new Error(`did not exit within ${ms} ms of ${signal}\n${describe(server)}`)
      return result
    },
    waitForLine
  }
  return server
}

export interface ReadyOptions {
  /** Default READY_TIMEOUT_MS. */
  timeoutMs?: number
  /** How often /ready is polled (an exit wakes the wait at once). Default 50. */
  pollMs?: number
}

interface TcpSocket {
  local: number
  remote: number
  /** In hex, as the kernel gives it: 0A is LISTEN. */
  state: string
  inode: string
}

/** The kernel's TCP sockets (IPv4 and IPv6), read from Linux's /proc; null where there is none. */
async function tcpSockets (): Promise<TcpSocket[] | null> {
  const tables = await Promise.all(['/proc/net/tcp', '/proc/net/tcp6'].map(async (table) => await readFile(table, 'utf8').catch(() => null)))
  if (tables.every((text) => text === null)) return null
  const port = (address: string): number => parseInt(address.slice(address.lastIndexOf(':') + 1), 16)
  const sockets: TcpSocket[] = []
  for (const text of tables) {
    // Past the heading: sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode.
    for (const line of (text ?? '').split('\n').slice(1)) {
      const [, local, remote, state, , , , , , inode] = line.trim().split(/\s+/)
      if (local !== undefined && remote !== undefined && state !== undefined && inode !== undefined) sockets.push({ local: port(local), remote: port(remote), state, inode })
    }
  }
  return sockets
}

/** Whether process `pid` holds a socket listening on TCP `port` (where there is no /proc, assumed so). */
export async function listensOn (pid: number | undefined, port: number): Promise<boolean> {
  if (pid === undefined) return false
  const sockets = await tcpSockets()
  if (sockets === null) return true
  const inodes = new Set(sockets.filter((socket) => socket.local === port && socket.state === '0A').map((socket) => `socket:[${socket.inode}]`))
  for (const fd of await readdir(`/proc/${pid}/fd`).catch(() => [])) {
    if (inodes.has(await readlink(`/proc/${pid}/fd/${fd}`).catch(() => ''))) return true
  }
  return false
}

/**
 * The state (hex, as /proc/net/tcp gives it) of the kernel's socket from local `port` to peer
 * `peer`, or null when there is none, waiting up to `waitMs` for it to go.
 */
export async function kernelConnection (port: number, peer: number, waitMs = 0): Promise<string | null> {
  const deadline = Date.now() + waitMs
  for (;;) {
    const found = (await tcpSockets())?.find((socket) => socket.local === port && socket.remote === peer)
    if (found === undefined || Date.now() >= deadline) return found?.state ?? null
    await sleep(50)
  }
}

/** Polls GET /ready until this process answers 200; throws, with the child's output, if the process exits first or past the timeout. */
export async function waitReady (server: ServerProcess, { timeoutMs = READY_TIMEOUT_MS, pollMs = 50 }: ReadyOptions = {}): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (server.exit() !== null) throw new Error(`server exited before it was ready\n${describe(server)}`)
    try {
      const res = await fetch(`${server.base}/ready`, { signal: AbortSignal.timeout(5000) })
      await res.arrayBuffer()
      // Another process may hold the port this one then fails to bind: its 200 is not ours.
      if (res.status === 200 && await listensOn(server.child.pid, server.port)) return
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) throw new Error(`not ready within ${timeoutMs} ms\n${describe(server)}`)
    // /ready is the only readiness signal a process offers; poll it, but wake on an exit.
    await Promise.race([sleep(pollMs), server.exited])
  }
}

export interface Scratch {
  /** A fresh temp folder: the server's cwd unless told otherwise. */
  readonly dir: string
  /** Spawns with exactly `env` without waiting for anything (boot-failure tests). */
  readonly spawnRaw: (env: Record<string, string>, cwd?: string) => ServerProcess
  /** Spawns with baseEnv(env) on a free port and waits until GET /ready is 200. */
  readonly start: (env?: Record<string, string>, cwd?: string) => Promise<ServerProcess>
}

export interface ScratchOptions {
  /** Prefix of the temp folder's name. */
  prefix?: string
  /** Passed to waitReady by `start`. */
  ready?: ReadyOptions
}

/**
 * A temp folder and the servers spawned from it. At teardown every server still running is
 * killed (SIGKILL) and reaped, then the folder is removed.
 */
export async function scratch (t: TestContext, { prefix = 'taskvault-proc-', ready }: ScratchOptions = {}): Promise<Scratch> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  const children = new Set<ServerProcess>()
  // One teardown, so children are always dead before their folder is removed.
  t.teardown(async () => {
    await Promise.all([...children].map(async (server) => {
      if (server.exit() === null) server.child.kill('SIGKILL')
      await server.exited
    }))
    await rm(dir, { recursive: true, force: true, maxRetries: 3 })
  })
  const spawnRaw = (env: Record<string, string>, cwd = dir): ServerProcess => {
    const server = spawnServer(env, cwd)
    children.add(server)
    return server
  }
  const start = async (env: Record<string, string> = {}, cwd = dir): Promise<ServerProcess> => {
    // The port is free when picked but may be taken before the child binds it: retry then.
    for (let attempt = 1; ; attempt++) {
      const server = spawnRaw(baseEnv({ ...env, PORT: String(await freePort()) }), cwd)
      try {
        await waitReady(server, ready)
        return server
      } catch (err) {
        if (attempt < 4 && server.exit() !== null && /EADDRINUSE/.test(server.stderr() + server.stdout())) continue
        throw err
      }
    }
  }
  return { dir, spawnRaw, start }
}

// ---------------------------------------------------------------------------------------
// HTTP and logs
// ---------------------------------------------------------------------------------------

export interface Reply {
  status: number
  body: any
}

export type Method = 'GET' | 'POST' | 'DELETE'

export type Call = (server: ServerProcess, method: Method, path: string, body?: unknown) => Promise<Reply>

/** A request function whose requests are aborted after `timeoutMs`; a JSON body is sent and parsed. */
export function caller (timeoutMs: number): Call {
  return async (server, method, path, body) => {
    const res = await fetch(`${server.base}${path}`, {
      method,
      signal: AbortSignal.timeout(timeoutMs),
      ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
    })
    const text = await res.text()
    return { status: res.status, body: text === '' ? null : JSON.parse(text) }
  }
}

/** A request with the default timeout (20 s). */
export const call: Call = caller(20_000)

/** A task as the API shows it. */
export interface TaskView {
  id: string
  instruction: string
  task_type: string
  status: string
  result: string | null
  error: string | null
  confidence: number | null
  created_at: string
  started_at: string | null
  completed_at: string | null
  attempts: number
}

/** Every JSON line of a pino stdout, parsed (other lines are skipped). */
export function logLines (stdout: string): Array<Record<string, unknown>> {
  return stdout.split('\n').filter((line) => line.startsWith('{')).flatMap((line) => {
    try {
      return [JSON.parse(line) as Record<string, unknown>]
    } catch {
      return []
    }
  })
}

/** What each JSON log line of a pino stdout says. */
export function logMessages (stdout: string): string[] {
  return logLines(stdout).map((line) => String(line.msg ?? ''))
}
