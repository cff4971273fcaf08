/**
 * Shared by the agents-*.test.ts files: fake agents on real sockets (a node:http server on
 * 127.0.0.1 that records every request and answers as the test says), the fixtures' paths,
 * and small readers of what is on disk. Not a *.test.ts file: tap does not run it.
 */
import { randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { createServer, type IncomingHttpHeaders, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance } from 'fastify'
import type { SessionFile, Task } from '../schemas/session.js'
import type { AgentCallEvent } from '../services/task-manager.js'
import { post, type TestContext } from './helper.js'
import { node } from './node-child.js'

export { waitFor } from './helper.js'

/** A request as the fake agent saw it. */
export interface Received {
  method: string
  path: string
  headers: IncomingHttpHeaders
  body: string
  /** The body parsed as JSON, or undefined. */
  json: any
  /** Date.now() when the whole body had arrived. */
  at: number
  /** Resolves once the connection carrying the request closed or the answer was sent. */
  closed: Promise<void>
  /** True when the client went away before an answer was sent (an aborted call). */
  abandoned: () => boolean
}

/** What the fake answers: a status, headers and a body (an object is sent as JSON), or nothing ever. */
export type Answer = { status?: number, headers?: Record<string, string>, body?: unknown } | 'hang'

export type Handler = (request: Received, index: number) => Answer | Promise<Answer>

export interface FakeAgent {
  /** http://127.0.0.1:<port>/<this fake's own prefix> */
  base: string
  requests: Received[]
  handler: Handler
  /** Resolves once `n` requests have arrived; throws after `ms`. */
  waitForRequests: (n: number, ms?: number) => Promise<Received[]>
}

/**
 * A fake agent server on 127.0.0.1; closed (connections cut) at teardown. It answers only
 * under a prefix of its own (404 elsewhere, not recorded): its port may be one another test
 * process used a moment ago, whose clients (a browser's EventSource, a retrying agent call)
 * still knock, and their requests must not count as this test's.
 */
export async function fakeAgent (t: TestContext, handler: Handler): Promise<FakeAgent> {
  const prefix = `/fake-${randomUUID()}`
  const requests: Received[] = []
  const waiters = new Set<() => void>()
  const fake: FakeAgent = {
    base: '',
    requests,
    handler,
    waitForRequests: async (n, ms = 10_000) => {
      const deadline = Date.now() + ms
      while (requests.length < n) {
        if (Date.now() > deadline) throw new Error(`fake agent: ${requests.length} requests after ${ms} ms, waited for ${n}`)
        await new Promise<void>((resolve) => {
          const wake = (): void => { waiters.delete(wake); resolve() }
          waiters.add(wake)
          setTimeout(wake, 50).unref()
        })
      }
      return requests.slice(0, n)
    }
  }
  const server = createServer((req, res) => {
    const url = req.url ?? ''
    if (url !== prefix && !url.startsWith(`${prefix}/`) && !url.startsWith(`${prefix}?`)) {
      req.resume()
      send(res, { status: 404, body: 'not this fake agent' })
      return
    }
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8')
      let json: unknown
      try { json = JSON.parse(body) } catch { json = undefined }
      let answered = false
      let resolveClosed!: () => void
      const closed = new Promise<void>((resolve) => { resolveClosed = resolve })
      res.on('close', () => resolveClosed())
      const received: Received = {
        method: req.method ?? '',
        path: url.slice(prefix.length) === '' ? '/' : url.slice(prefix.length),
        headers: req.headers,
        body,
        json,
        at: Date.now(),
        closed,
        abandoned: () => !answered && res.destroyed
      }
      const index = requests.push(received) - 1
      for (const wake of [...waiters]) wake()
      Promise.resolve(fake.handler(received, index)).then((answer) => {
        if (answer === 'hang') return
        answered = true
        send(res, answer)
      }, (err: Error) => {
        answered = true
        send(res, { status: 599, body: `fake agent handler threw: ${err.message}` })
      })
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  fake.base = `http://127.0.0.1:${(server.address() as AddressInfo).port}${prefix}`
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  return fake
}

function send (res: ServerResponse, answer: Exclude<Answer, 'hang'>): void {
  if (res.destroyed) return
  const isText = typeof answer.body === 'string' || answer.body === undefined
  const payload = isText ? String(answer.body ?? '') : JSON.stringify(answer.body)
  res.writeHead(answer.status ?? 200, { 'content-type': isText ? 'text/plain' : 'application/json', ...answer.headers })
  res.end(payload)
}

/** A webhook agent's successful answer. */
export const ok = (result: string, confidence?: number | null): Answer => ({ body: { result, ...(confidence !== undefined && { confidence }) } })

/** An OpenAI chat completion; with `logprobs`, the per-token log probabilities. */
export function completion (content: string, logprobs?: number[]): Answer {
  return {
    body: {
      id: 'chatcmpl-test',
      object: 'chat.completion',
      model: 'test-model',
      choices: [{
        index: 0,
        finish_reason: 'stop',
        message: { role: 'assistant', content },
        logprobs: logprobs === undefined ? null : { content: logprobs.map((logprob, i) => ({ token: `t${i}`, logprob, bytes: [], top_logprobs: [] })) }
      }]
    }
  }
}

const FIXTURES = fileURLToPath(new URL('../../test/fixtures/agents/', import.meta.url))

/** argv running a fixture script with this node (without tap's preload: test/node-child.ts). */
export function fixture (name: string, ...args: string[]): string[] {
  const [file, argv] = node([join(FIXTURES, name), ...args])
  return [file, ...argv]
}

/** Creates tasks with explicit types; returns their ids. */
export async function createTasks (app: FastifyInstance, sessionId: string, tasks: Array<{ instruction: string, task_type?: Task['task_type'] }>): Promise<string[]> {
  const res = await post(app, '/create', { session_id: sessionId, tasks })
  if (res.statusCode !== 200) throw new Error(`create failed: ${res.statusCode} ${res.body}`)
  return res.json().task_ids
}

/** The session file exactly as stored. */
export async function readSession (dir: string, sessionId: string): Promise<SessionFile> {
  return JSON.parse(await readFile(join(dir, `${sessionId}.json`), 'utf8'))
}

export async function storedTasks (dir: string, sessionId: string): Promise<Task[]> {
  return (await readSession(dir, sessionId)).session.tasks
}

/** Every 'agent-call' event the app's manager emits from now on. */
export function recordCalls (app: FastifyInstance): AgentCallEvent[] {
  const events: AgentCallEvent[] = []
  app.taskManager.events.on('agent-call', (event) => events.push(event))
  return events
}

/** Whether a process exists and is not a zombie (a container's pid 1 may never reap it). */
export function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
  try {
    // "pid (comm) S ...": the state follows the last ')'.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z'
  } catch {
    return false
  }
}
