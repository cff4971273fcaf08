import { InvalidDatabaseSettingError } from '../../errors.js'

/**
 * The database URL and schema name, checked and made printable. Free of the pg driver, so that
 * a server or a command that never uses a database does not load it.
 */

/** Lower case, so the name never needs quoting in search_path or in logs; 63 bytes at most (NAMEDATALEN). */
export const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/u

/** The schema name, checked; `setting` is what the message names (TASK_DB_SCHEMA, --schema). */
export function checkSchemaName (schema: string, setting = 'TASK_DB_SCHEMA'): string {
  if (!SCHEMA_NAME.test(schema)) {
    throw new InvalidDatabaseSettingError(setting, `'${schema.slice(0, 80)}' is not a usable schema name (lower-case letters, digits and _, not starting with a digit, at most 63)`)
  }
  if (schema.startsWith('pg_')) throw new InvalidDatabaseSettingError(setting, `'${schema}': names starting with pg_ are reserved by PostgreSQL`)
  return schema
}

/** The URL, checked to be a postgres:// one. The message never holds the password. */
export function parseDatabaseUrl (url: string, setting = 'DATABASE_URL'): URL {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    throw new InvalidDatabaseSettingError(setting, 'is not a URL (expected postgres://user:password@host:5432/database)')
  }
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') {
    throw new InvalidDatabaseSettingError(setting, `must be a postgres:// URL, not ${parsed.protocol}//`)
  }
  return parsed
}

/** Query parameters of a connection URL that hold secrets. */
const SECRET_PARAMS = new Set(['password', 'sslpassword'])

/** The URL for logs and messages: the password (in the authority or a parameter) replaced by ***. */
export function redactUrl (url: string): string {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    // Nothing can be said about where its secrets are.
    return '(a malformed database URL)'
  }
  if (parsed.password !== '') parsed.password = '***'
  for (const key of [...parsed.searchParams.keys()]) {
    if (SECRET_PARAMS.has(key.toLowerCase())) parsed.searchParams.set(key, '***')
  }
  return parsed.toString()
}
