// PostgreSQL for the bench: a throwaway database per run (created with a random name, dropped at
// the end), bulk fills of the sessions table with the very rows the store writes, and the
// commit counter of one database (pg_stat_database.xact_commit), and the store opened as the server opens it.
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { PostgresSessionStore } from '../../dist/services/store/postgres/postgres-store.js'
import { makeSession, serialize, sessionId } from './fixtures.mjs'

export const ADMIN_URL = process.env.TASK_BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

async function admin () {
  const client = new pg.Client({ connectionString: ADMIN_URL, connectionTimeoutMillis: 3000 })
  await client.connect()
  return client
}

/** The store's settings as the server's defaults give them (TASK_DB_POOL_MAX 10, TASK_DB_STATEMENT_TIMEOUT_MS 15 s). */
const storeSettings = (url, schema) => ({ url, schema, max: 10, statementTimeoutMs: 15_000 })

/** A PostgresSessionStore on `schema` (migrated by init), as the server would open it. */
export async function openStore (url, schema) {
  const store = new PostgresSessionStore({ settings: storeSettings(url, schema) })
  await store.init()
  return store
}

/** Why no PostgreSQL answers at ADMIN_URL, or null when one does. */
export async function unreachable () {
  try {
    const client = await admin()
    await client.end()
    return null
  } catch (err) {
    return `${err.code ?? ''} ${err.message}`.trim()
  }
}

/** A new empty database; returns { name, url, drop() }. */
export async function throwawayDatabase () {
  const name = `taskvault_bench_${randomBytes(6).toString('hex')}`
  const client = await admin()
  try {
    await client.query(`CREATE DATABASE ${client.escapeIdentifier(name)} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'`)
  } finally {
    await client.end()
  }
  const url = new URL(ADMIN_URL)
  url.pathname = `/${name}`
  return {
    name,
    url: url.toString(),
    async drop () {
      const c = await admin()
      try {
        await c.query(`DROP DATABASE IF EXISTS ${c.escapeIdentifier(name)} WITH (FORCE)`)
      } finally {
        await c.end()
      }
    }
  }
}

/**
 * Transactions committed in database `name` so far. PostgreSQL 15 publishes a backend's counts
 * when it exits (or up to 10 s later while idle): read this after the pools that did the work are ended.
 */
export async function commitsOf (name) {
  const client = await admin()
  try {
    const { rows } = await client.query('SELECT xact_commit::bigint AS n FROM pg_stat_database WHERE datname = $1', [name])
    return Number(rows[0]?.n ?? 0)
  } finally {
    await client.end()
  }
}

/** The columns the store derives from a document (PostgresSessionStore's derive), for plaintext sessions. */
function derived (file) {
  const tasks = file.session.tasks
  const count = (status) => tasks.filter((t) => t.status === status).length
  const completed = count('Completed')
  const failed = count('Failed')
  const pending = count('Pending')
  const inProgress = count('InProgress')
  const finished = tasks.length > 0 && pending === 0 && inProgress === 0
  const finishedAt = finished ? tasks.map((t) => t.completed_at).filter(Boolean).sort().at(-1) ?? file.updated_at : null
  return [file.created_at, file.updated_at, finishedAt, tasks.length, completed, failed, pending, inProgress]
}

/**
 * Fills `<schema>.sessions` (already migrated) with `count` active sessions of `tasks` tasks,
 * the same documents bench/lib/fixtures.mjs writeSessions puts in files (same ids, same bytes),
 * 1,000 rows per INSERT ... SELECT FROM unnest(...). Returns { count, bytes }.
 */
export async function fillSessions (url, schema, count, tasks = 10) {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  let bytes = 0
  try {
    for (let start = 0; start < count; start += 1000) {
      const cols = [[], [], [], [], [], [], [], [], [], []]
      for (let i = start; i < Math.min(count, start + 1000); i++) {
        const id = sessionId(i)
        const file = makeSession(id, tasks, { seed: i % 86_400 })
        const doc = serialize(file).toString('utf8')
        bytes += Buffer.byteLength(doc)
        const values = [id, doc, ...derived(file)]
        values.forEach((v, k) => cols[k].push(v))
      }
      await client.query(`INSERT INTO ${schema}.sessions (session_id, document, created_at, updated_at, finished_at,
          tasks_total, tasks_completed, tasks_failed, tasks_pending, tasks_in_progress)
        SELECT * FROM unnest($1::text[], $2::json[], $3::timestamptz[], $4::timestamptz[], $5::timestamptz[],
          $6::int[], $7::int[], $8::int[], $9::int[], $10::int[])`, cols)
    }
    await client.query(`ANALYZE ${schema}.sessions`)
  } finally {
    await client.end()
  }
  return { count, bytes }
}

/**
 * Half of a filled schema's sessions archived (every even row), and older archived copies that
 * a list must pass over: one behind each twentieth active session (a bring-back cut short) and
 * one behind each twentieth archived one (archived twice).
 */
export async function archiveHalf (url, schema) {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  // Older copies, so lower row ids (negative: clear of the identity's).
  const copy = `INSERT INTO ${schema}.sessions (row_id, session_id, document, created_at, updated_at, finished_at, archived_at,
      tasks_total, tasks_completed, tasks_failed, tasks_pending, tasks_in_progress) OVERRIDING SYSTEM VALUE
    SELECT -row_id, session_id, document, created_at, updated_at - interval '1 day', finished_at, now(), 0, 0, 0, 0, 0 FROM ${schema}.sessions`
  try {
    await client.query(`UPDATE ${schema}.sessions SET archived_at = now() WHERE row_id % 2 = 0`)
    await client.query(`${copy} WHERE row_id % 20 IN (1, 2)`)
    // As autovacuum leaves a table at rest: counts may read the indexes alone.
    await client.query(`VACUUM ANALYZE ${schema}.sessions`)
  } finally {
    await client.end()
  }
}

/** A throwaway database for the section `name`; null (logged, the section marked skipped) when no PostgreSQL answers. */
export async function sectionDatabase ({ sections, log }, name) {
  const why = await unreachable()
  if (why !== null) {
    log(`  SKIPPED: no PostgreSQL at ${ADMIN_URL.replace(/:[^:@/]*@/, ':***@')} (${why}); the ${name} section measured nothing`)
    sections[name] = { skipped: why }
    return null
  }
  const db = await throwawayDatabase()
  log(`  database ${db.name}`)
  return db
}
