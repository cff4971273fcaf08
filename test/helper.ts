import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import v8 from 'node:v8'
import vm from 'node:vm'
import type { FastifyInstance, FastifyServerOptions, LightMyRequestResponse } from 'fastify'
import { buildApp, type BuildAppOptions } from '../app.js'
import { FileSessionStore } from '../services/store/file-store.js'
import type { FsSeam } from '../services/store/fs-seam.js'
import { FORMAT_VERSION, MARKER_FILE } from '../services/store/storage-folder.js'

/** The slice of tap's Test that the helpers need (keeps them usable from any test file). */
export interface TestContext {
  teardown(fn: () => unknown): void
}

/** A fresh storage folder, removed when the test ends. */
export async function tempDir (t: TestContext, prefix = 'taskvault-test-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

/** A file store on a fresh temp folder (through `fs` when given), initialised. */
export async function openStore (t: TestContext, fs?: FsSeam): Promise<FileSessionStore> {
  const store = new FileSessionStore({ dir: await tempDir(t), ...(fs === undefined ? {} : { fs }) })
  await store.init()
  return store
}

/** A promise with its resolve at hand: a gate a test opens when it chooses. */
export function deferred<T = void> (): { promise: Promise<T>, resolve: (value: T) => void } {
  let resolve!: (value: T) => void
  const promise = new Promise<T>((_resolve) => { resolve = _resolve })
  return { promise, resolve }
}

/** Polls `check` until it returns a value other than undefined/false; throws with `what` after `ms`. */
export async function waitFor<T> (what: string, check: () => T | undefined | false | Promise<T | undefined | false>, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms
  for (;;) {
    const value = await check()
    if (value !== undefined && value !== false) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await sleep(20)
  }
}

export interface TestAppOptions extends Omit<BuildAppOptions, 'config' | 'readEnvironment'> {
  /** Storage folder; a fresh temp folder when omitted. */
  dir?: string
  config?: BuildAppOptions['config']
}

/**
 * The real app, built exactly as production builds it (same server options), isolated from
 * the environment, on its own storage folder, ready (sessions restored), and closed at teardown.
 */
export async function build (t: TestContext, options: TestAppOptions = {}): Promise<FastifyInstance> {
  const dir = options.dir ?? await tempDir(t)
  const { dir: _dir, config, ...rest } = options
  const app = await buildApp({
    ...rest,
    readEnvironment: false,
    config: { TASK_STORAGE_DIR: dir, TASK_SHUTDOWN_GRACE_MS: 2000, ...config }
  })
  t.teardown(() => app.close())
  await app.ready()
  return app
}

export const API = '/api/v1/tasks'

export function post (app: FastifyInstance, path: string, body: unknown): Promise<LightMyRequestResponse> {
  return app.inject({ method: 'POST', url: `${API}${path}`, payload: body as object })
}

export function get (app: FastifyInstance, path: string): Promise<LightMyRequestResponse> {
  return app.inject({ method: 'GET', url: `${API}${path}` })
}

/** Creates a session from free-text instructions and returns the parsed response body. */
export async function createSession (app: FastifyInstance, sessionId: string, instructions: string): Promise<{ task_ids: string[] }> {
  const res = await post(app, '/create', { session_id: sessionId, instructions })
  if (res.statusCode !== 200) throw new Error(`create failed: ${res.statusCode} ${res.body}`)
  return res.json()
}

/** Creates a session from free-text instructions, runs it to the end and archives it (an archive pass of everything finished). */
export async function archivedSession (app: FastifyInstance, sessionId: string, instructions: string): Promise<void> {
  await createSession(app, sessionId, instructions)
  const run = await post(app, '/execute-all', { session_id: sessionId })
  if (run.statusCode !== 200) throw new Error(`execute-all failed: ${run.statusCode} ${run.body}`)
  const pass = await post(app, '/archive', { older_than_days: 0 })
  if (pass.statusCode !== 200 || !(pass.json().archived_ids as string[]).includes(sessionId)) throw new Error(`archive failed: ${pass.statusCode} ${pass.body}`)
}

/**
 * Marks `dir` as a taskvault folder, as a server's first start does: fixtures that plant files
 * restore must set aside (corrupt JSON) need it, since an unmarked folder holding them is refused.
 */
export async function markAsTaskvault (dir: string): Promise<void> {
  await writeFile(join(dir, MARKER_FILE), JSON.stringify({ format: FORMAT_VERSION }) + '\n', { mode: 0o600 })
}

/** A /stats body without the free-space figures: they move with everything else on the disk. */
export function withoutFreeSpace (stats: Record<string, any>): Record<string, unknown> {
  const { storage: { free_bytes: _free, total_bytes: _total, free_ratio: _ratio, ...storage }, ...rest } = stats
  return { ...rest, storage }
}

/** One JSON line as pino writes it. */
export interface LogLine {
  level: number
  msg?: string
  [key: string]: any
}

/**
 * A pino destination in memory: `logger` for buildApp (or `stream` for logger options of a
 * test's own), with every raw chunk, the parsed lines, and their messages.
 */
export function memoryLog (level = 'info'): { raw: string[], stream: { write: (chunk: string) => void }, logger: FastifyServerOptions['logger'], lines: () => LogLine[], messages: () => string[] } {
  const raw: string[] = []
  const stream = { write: (chunk: string) => { raw.push(chunk) } }
  const lines = (): LogLine[] => raw.join('').split('\n').filter((line) => line.trim() !== '').map((line) => JSON.parse(line) as LogLine)
  return { raw, stream, logger: { level, stream } as FastifyServerOptions['logger'], lines, messages: () => lines().map((line) => String(line.msg)) }
}

/** The heap and array buffers in use after a full collection (the collector is exposed to this process for it). */
export function heldBytes (): number {
  v8.setFlagsFromString('--expose-gc')
  const gc = vm.runInNewContext('gc') as () => void
  gc()
  const usage = process.memoryUsage()
  return usage.heapUsed + usage.arrayBuffers
}
