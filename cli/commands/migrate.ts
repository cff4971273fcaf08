import type pg from 'pg'
import { noop } from '../../services/noop.js'
import { DatabaseUnavailableError } from '../../services/errors.js'
import { COMMON_HELP, type Command } from '../command.js'
import { requiredDatabase } from '../database.js'

/** A database that is starting (or a network that is settling) gets this many tries, this far apart at first. */
const CONNECT_ATTEMPTS = 4
const FIRST_RETRY_MS = 250
const CONNECT_TIMEOUT_MS = 3_000

export const migrateCommand: Command = {
  name: 'migrate',
  summary: 'apply the PostgreSQL migrations this taskvault ships (servers also do at start)',
  help: `Usage: taskvault migrate --database-url URL [--schema NAME] [--json]

Creates the schema and its tables when they are missing and applies every migration the
database does not have yet, each in its own transaction. An advisory lock makes concurrent
runs (and servers starting at the same time) apply each migration once. A database migrated
by a newer taskvault is refused, naming both versions.

Options:
  --database-url URL  a postgres:// URL (default: DATABASE_URL, from the environment or ./.env); its password is never printed
  --schema NAME       the schema that holds taskvault's tables (default: TASK_DB_SCHEMA, else taskvault)

Exit status 1 when the database cannot be reached (after a few tries over about two seconds),
is newer than this taskvault, or a migration fails.

${COMMON_HELP}`,
  options: {
    'database-url': { type: 'string' },
    schema: { type: 'string' }
  },
  positionals: { min: 0, max: 0, names: '' },
  async run (args, { settings }) {
    // DATABASE_URL and TASK_DB_SCHEMA as the server reads them: the environment, then ./.env.
    const target = requiredDatabase(args, settings)
    const { url, schema, where: database } = target
    // Loaded here, like every use of the driver: the other commands start without it.
    const [{ migrate, readMigrations }, { connectionConfig }] = await Promise.all([import('../../services/store/postgres/migrate.js'), import('../../services/store/postgres/pool.js')])
    const client = await connect(connectionConfig({ url, schema, max: 1, statementTimeoutMs: 0, connectTimeoutMs: CONNECT_TIMEOUT_MS }), database)
    try {
      const result = await migrate(client, { schema })
      const names = new Map((await readMigrations()).map((file) => [file.version, file.name]))
      const lines = result.applied.length === 0
        ? [`Schema ${schema} at ${database} is up to date (migration ${result.version})`]
        : [`Applied ${result.applied.length} migration${result.applied.length === 1 ? '' : 's'} to schema ${schema} at ${database}:`,
            ...result.applied.map((version) => `  ${String(version).padStart(3, '0')} ${names.get(version) ?? ''}`)]
      return { code: 0, json: { database, schema, applied: result.applied, version: result.version }, lines }
    } finally {
      await client.end().catch(noop)
    }
  }
}

/** A connected client; failures that may pass (refused, timed out, starting up) are tried again. */
async function connect (config: pg.ClientConfig, database: string): Promise<pg.Client> {
  const { default: pg } = await import('pg')
  for (let attempt = 1; ; attempt++) {
    const client = new pg.Client(config)
    // An error after connecting (the server going away) must not end the process unheard.
    client.on('error', noop)
    try {
      await client.connect()
      return client
    } catch (err) {
      await client.end().catch(noop)
      const reason = describe(err)
      if (!transient(err) || attempt === CONNECT_ATTEMPTS) {
        const tries = attempt === 1 ? '' : ` (${attempt} tries)`
        throw new DatabaseUnavailableError(`cannot connect to the database at ${database}${tries}: ${reason}`, { cause: err })
      }
      await new Promise((resolve) => setTimeout(resolve, FIRST_RETRY_MS * 2 ** (attempt - 1)))
    }
  }
}

const TRANSIENT_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN',
  // SQLSTATE: the server is starting or shutting down; too many connections.
  '57P03', '53300'])

function transient (err: unknown): boolean {
  const code = (err as { code?: unknown }).code
  if (typeof code === 'string') return TRANSIENT_CODES.has(code)
  // node-postgres's own connection timeout carries no code.
  return /timeout|terminated/iu.test(describe(err))
}

/** One line for an error; a failed connect to a name with several addresses is an AggregateError with no message. */
function describe (err: unknown): string {
  if (!(err instanceof Error)) return String(err)
  if (err.message !== '') return err.message
  const first = (err as Partial<AggregateError>).errors?.[0] as Error | undefined
  return first?.message ?? (err as NodeJS.ErrnoException).code ?? err.name
}
