import { TaskvaultError } from '../../errors.js'

/**
 * The PostgreSQL store's own errors. They stop a boot or a `taskvault migrate`, so each
 * message is one line that names the setting or the versions involved.
 */

/** A PostgreSQL setting (TASK_DB_SCHEMA, DATABASE_URL, ...) that cannot be used. */
export class InvalidDatabaseSettingError extends TaskvaultError {
  constructor (readonly setting: string, message: string) {
    super('INVALID_DATABASE_SETTING', `${setting}: ${message}`)
  }
}

/** The database was migrated by a newer taskvault: running against it could lose its changes. */
export class DatabaseTooNewError extends TaskvaultError {
  constructor (readonly databaseVersion: number, readonly knownVersion: number) {
    super('DATABASE_TOO_NEW', `database is at migration ${databaseVersion}, this taskvault knows up to ${knownVersion}; upgrade taskvault`)
  }
}

/** A migration file that is malformed, or that changed after it was applied, or that failed to apply. */
export class MigrationError extends TaskvaultError {
  constructor (message: string, options?: ErrorOptions) {
    super('MIGRATION_FAILED', message, options)
  }
}

/** The database could not be reached (refused, timed out, not accepting connections yet). */
export class DatabaseUnavailableError extends TaskvaultError {
  constructor (message: string, options?: ErrorOptions) {
    super('DATABASE_UNAVAILABLE', message, options)
  }
}
