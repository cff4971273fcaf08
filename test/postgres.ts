/**
 * A PostgreSQL database of the test's own: created on the server at TASK_TEST_DATABASE_URL
 * with a random name, dropped when the test ends. Not a *.test.ts file: tap does not run it.
 */
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { noop } from '../services/noop.js'
import { connectionConfig, createPool } from '../services/store/postgres/pool.js'
import { PostgresSessionStore, type PostgresSessionStoreOptions } from '../services/store/postgres/postgres-store.js'
import { startProxy, type TcpProxy } from './tcp-proxy.js'

export const ADMIN_URL = process.env.TASK_TEST_DATABASE_URL ?? 'postgres://127.0.0.1:5432/postgres'

export interface DatabaseTestContext {
  teardown(fn: () => unknown): void
  fail(message: string): unknown
  skip(name: string, fn: () => unknown): unknown
}

let skipAnnounced = false

/**
 * The URL of a fresh, empty database, or null when no server answers: the test then fails
 * under CI=true (a skip there would hide that nothing ran) and is skipped elsewhere, with one
 * loud line so that a green run without PostgreSQL is not mistaken for a tested one.
 * `linguistic`: the database orders text as people read (ICU en-US, like en_US.utf8, the postgres
 * image's default), where `_` and case weigh less than letters.
 */
export async function testDatabase (t: DatabaseTestContext, options: { linguistic?: boolean } = {}): Promise<string | null> {
  let admin: pg.Client
  try {
    admin = await adminClient()
  } catch (err) {
    const reason = `no PostgreSQL at ${ADMIN_URL} (${describe(err)})`
    if (process.env.CI === 'true') {
      t.fail(`${reason}; under CI=true the PostgreSQL tests must run`)
      return null
    }
    if (!skipAnnounced) process.stderr.write(`# SKIP PostgreSQL tests: ${reason}\n`)
    skipAnnounced = true
    t.skip(`PostgreSQL tests: ${reason}`, noop)
    return null
  }
  const name = `taskvault_test_${randomBytes(6).toString('hex')}`
  try {
    // template0 with the C locale accepts UTF8 whatever the cluster's default is: the
    // fidelity tests need every character stored as it is.
    const collation = options.linguistic === true ? " LOCALE_PROVIDER icu ICU_LOCALE 'en-US'" : ''
    await admin.query(`CREATE DATABASE ${admin.escapeIdentifier(name)} TEMPLATE template0 ENCODING 'UTF8'${collation} LC_COLLATE 'C' LC_CTYPE 'C'`)
  } finally {
    await admin.end().catch(noop)
  }
  t.teardown(async () => {
    const client = await adminClient()
    try {
      // FORCE: a test that failed half-way may leave connections open.
      await client.query(`DROP DATABASE IF EXISTS ${client.escapeIdentifier(name)} WITH (FORCE)`)
    } finally {
      await client.end().catch(noop)
    }
  })
  const url = new URL(ADMIN_URL)
  url.pathname = `/${name}`
  return url.toString()
}

async function adminClient (): Promise<pg.Client> {
  const client = new pg.Client(connectionConfig({ url: ADMIN_URL, schema: 'public', max: 1, statementTimeoutMs: 0, connectTimeoutMs: 5_000 }))
  client.on('error', noop)
  try {
    await client.connect()
  } catch (err) {
    await client.end().catch(noop)
    throw err
  }
  return client
}

function describe (err: unknown): string {
  if (!(err instanceof Error)) return String(err)
  if (err.message !== '') return err.message
  return ((err as Partial<AggregateError>).errors?.[0] as Error | undefined)?.message ?? (err as NodeJS.ErrnoException).code ?? err.name
}

/** A plain pool straight to the database's `schema`, to look at the rows behind the store's back; ended when the test ends. */
export function inspector (t: DatabaseTestContext, url: string, schema: string): pg.Pool {
  const pool = createPool({ url, schema, max: 2, statementTimeoutMs: 10_000 })
  t.teardown(() => pool.end())
  return pool
}

export type TestStoreOptions = Partial<PostgresSessionStoreOptions> & { max?: number, statementTimeoutMs?: number, connectTimeoutMs?: number }

/** A PostgreSQL store of its own pool on `url` and `schema`, initialised, closed when the test ends. */
export async function openTestStore (t: DatabaseTestContext, url: string, schema: string, options: TestStoreOptions = {}): Promise<PostgresSessionStore> {
  const { max = 4, statementTimeoutMs = 5_000, connectTimeoutMs = 5_000, ...rest } = options
  const store = new PostgresSessionStore({ settings: { url, schema, max, statementTimeoutMs, connectTimeoutMs }, ...rest })
  t.teardown(() => store.close())
  await store.init()
  return store
}

/** A TCP proxy (tcp-proxy.ts) in front of the database at `url`, closed when the test ends, and the database's URL through it. */
export async function throughProxy (t: DatabaseTestContext, url: string): Promise<{ proxy: TcpProxy, url: string }> {
  const direct = new URL(url)
  const proxy = await startProxy(Number(direct.port || 5432), direct.hostname)
  t.teardown(() => proxy.close())
  const through = new URL(url)
  through.port = String(proxy.port)
  return { proxy, url: through.toString() }
}
