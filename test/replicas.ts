/**
 * Several taskvault replicas as real processes on one PostgreSQL database, and a webhook agent
 * in the test process that records every call (which replica made it, for which task, when) and
 * answers as the test tells it. Not a *.test.ts file: tap does not run it.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import pg from 'pg'
import { connectionConfig } from '../services/store/postgres/pool.js'
import type { TestContext } from './helper.js'
import { scratch, type ServerProcess } from './server-process.js'

export interface AgentCall {
  replica: string
  session: string
  task: string
  attempt: number
  at: number
  /** Set once answered (a call cut off by its replica's death or abort never is). */
  answered: boolean
}

/** How the agent answers one call: a result after an optional wait, or `hold` (until released). */
export type Behaviour = (call: AgentCall) => { delayMs?: number, hold?: boolean }

export interface RecordingAgent {
  calls: AgentCall[]
  /** The webhook URL for one replica: the replica's name travels in the query string. */
  url: (replica: string) => string
  behave: (behaviour: Behaviour) => void
  /** Answers every held call now with `by <replica>` (or the given result). */
  release: (result?: (call: AgentCall) => string) => void
  /** Resolves with the first call that satisfies `match` (already made or yet to come). */
  waitForCall: (match: (call: AgentCall) => boolean, ms: number) => Promise<AgentCall>
}

/** A webhook agent answering `{result: 'by <replica>'}` (after the behaviour's delay). */
export async function recordingAgent (t: TestContext): Promise<RecordingAgent> {
  const calls: AgentCall[] = []
  const held: Array<{ call: AgentCall, res: ServerResponse }> = []
  const waiters = new Set<() => void>()
  let behaviour: Behaviour = () => ({})
  const answer = (call: AgentCall, res: ServerResponse, result = `by ${call.replica}`): void => {
    if (res.destroyed) return
    call.answered = true
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ result }))
  }
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    let body = ''
    req.setEncoding('utf8').on('data', (chunk: string) => { body += chunk }).on('end', () => {
      let parsed: { session_id: string, task: { id: string, attempt: number } }
      try {
        parsed = JSON.parse(body)
        if (typeof parsed.session_id !== 'string' || typeof parsed.task?.id !== 'string') throw new Error('not an agent call')
      } catch {
        // Not a replica's call: another test's server once held this port (a readiness probe
        // still asking it), so it is answered, never allowed to end this test's process.
        res.writeHead(404).end()
        return
      }
      const replica = new URL(req.url ?? '/', 'http://agent').searchParams.get('replica') ?? '?'
      const call: AgentCall = { replica, session: parsed.session_id, task: parsed.task.id, attempt: parsed.task.attempt, at: Date.now(), answered: false }
      calls.push(call)
      for (const wake of waiters) wake()
      const { delayMs = 0, hold = false } = behaviour(call)
      if (hold) held.push({ call, res })
      else if (delayMs > 0) setTimeout(() => { answer(call, res) }, delayMs)
      else answer(call, res)
    })
  })
  server.keepAliveTimeout = 60_000
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const { res } of held.splice(0)) res.destroy()
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  const port = (server.address() as AddressInfo).port
  return {
    calls,
    url: (replica) => `http://127.0.0.1:${port}/agent?replica=${replica}`,
    behave: (next) => { behaviour = next },
    release: (result) => {
      for (const { call, res } of held.splice(0)) answer(call, res, result?.(call))
    },
    waitForCall: async (match, ms) => {
      let wake = (): void => {}
      const found = new Promise<AgentCall>((resolve) => {
        wake = () => {
          const call = calls.find(match)
          if (call !== undefined) resolve(call)
        }
      })
      waiters.add(wake)
      wake()
      let timer: NodeJS.Timeout | undefined
      try {
        return await Promise.race([found, new Promise<never>((_resolve, reject) => {
          timer = setTimeout(() => { reject(new Error(`no such agent call within ${ms} ms (${calls.length} calls so far)`)) }, ms)
        })])
      } finally {
        clearTimeout(timer)
        waiters.delete(wake)
      }
    }
  }
}

export interface ReplicaSet {
  /** Starts (or restarts) replica `name` on the database, with `extra` settings; waits until ready. */
  start: (name: string, extra?: Record<string, string>) => Promise<ServerProcess>
}

/** Servers of one database, each a replica with its own TASK_REPLICA_ID and agent URL. */
export async function replicaSet (t: TestContext, url: string, agent: RecordingAgent, settings: Record<string, string>): Promise<ReplicaSet> {
  const { start } = await scratch(t, { prefix: 'taskvault-replicas-' })
  return {
    start: async (name, extra = {}) => start({
      TASK_STORE: 'postgres',
      DATABASE_URL: url,
      TASK_REPLICA_ID: name,
      TASK_ARCHIVE_DAYS: '0',
      TASK_AGENTS: JSON.stringify({ default: { kind: 'webhook', url: agent.url(name), timeout_ms: 60_000, max_attempts: 1 } }),
      ...settings,
      ...extra
    })
  }
}

export interface StoredTask {
  id: string
  status: string
  result: string | null
  error: string | null
  attempts: number
  interruptions?: number
  completed_at: string | null
}

export interface StoredRow {
  owner: string | null
  epoch: string
  version: string
  tasks: StoredTask[]
  background: boolean
}

/** Every active session as the database holds it, read straight from the rows. */
export async function storedRows (url: string): Promise<Map<string, StoredRow>> {
  const client = new pg.Client(connectionConfig({ url, schema: 'taskvault', max: 1, statementTimeoutMs: 0 }))
  await client.connect()
  try {
    const { rows } = await client.query<{ session_id: string, owner: string | null, epoch: string, version: string, document: string }>(
      'SELECT session_id, owner, epoch, version, document::text AS document FROM sessions WHERE archived_at IS NULL')
    return new Map(rows.map((row) => {
      const file = JSON.parse(row.document) as { session: { tasks: StoredTask[] }, background_run?: unknown }
      return [row.session_id, { owner: row.owner, epoch: row.epoch, version: row.version, tasks: file.session.tasks, background: file.background_run !== undefined }]
    }))
  } finally {
    await client.end()
  }
}
