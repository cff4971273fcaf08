import { hostname } from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'
import { Type, type Static } from '@sinclair/typebox'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type pg from 'pg'
import { STORE_SETTINGS, resolveSettings, settingOptions, type StoreSettings } from '../schemas/options.js'
import { DatabaseUnavailableError, InvalidDatabaseSettingError, InvalidOptionsError, LockNotStaleError, StorageError } from '../services/errors.js'
import { FileSessionStore } from '../services/store/file-store.js'
import type { FsSeam } from '../services/store/fs-seam.js'
import { Keyring } from '../services/store/keyring.js'
import { redactUrl } from '../services/store/postgres/database-url.js'
import type { MigrationLockWait } from '../services/store/postgres/migrate.js'
import type { SessionStore } from '../services/store/store.js'
import { appSettings, checkOptions, FunctionOption, inTermsOf, withOptionErrors } from './options.js'

declare module 'fastify' {
  interface FastifyInstance {
    persistence: SessionStore
  }
}

export const PersistenceOptionsSchema = Type.Object({
  ...settingOptions(STORE_SETTINGS).properties,
  /** File-system seam, for fault injection in tests. */
  fs: Type.Optional(Type.Unsafe<FsSeam>(Type.Object({}))),
  /** A host's pg.Pool for the PostgreSQL store (its connections' search_path must be the schema); used instead of DATABASE_URL. */
  pool: Type.Optional(Type.Unsafe<pg.Pool>(Type.Object({ query: FunctionOption, connect: FunctionOption, on: FunctionOption })))
}, { additionalProperties: false })

export type PersistencePluginOptions = Static<typeof PersistenceOptionsSchema>

/** The first wait between tries to reach a database that is down at boot; it doubles up to MAX. */
const CONNECT_RETRY_MS = 250
const CONNECT_RETRY_MAX_MS = 5000

/** The session store: one durable JSON file per session in the storage folder, or rows in PostgreSQL (TASK_STORE). */
export default fp<PersistencePluginOptions>(async function persistencePlugin (app, options) {
  checkOptions('taskvault-persistence', PersistenceOptionsSchema, options)
  const settings = resolveSettings(STORE_SETTINGS, options, appSettings(app))
  // Options that name one store while another is chosen are a mistake, not a preference.
  if (options.pool !== undefined && options.store === 'file') throw new InvalidOptionsError('taskvault-persistence', "option 'pool' is given with store: 'file'; a pool is for store: 'postgres'")
  if (options.databaseUrl !== undefined && options.pool === undefined && settings.store !== 'postgres') throw new InvalidOptionsError('taskvault-persistence', "option 'databaseUrl' is given but store is 'file': add store: 'postgres' (or drop databaseUrl)")
  // A host that gives up on the boot (its pluginTimeout) and closes stops the wait for the database
  // or the storage lock: a store opened after that would hold connections and the replica id, or
  // the folder's lock, with nobody to close it.
  const abandoned = new AbortController()
  app.addHook('onClose', async () => { abandoned.abort() })
  const store = await withOptionErrors(app, 'taskvault-persistence', STORE_SETTINGS, async () => {
    const keyring = Keyring.parse(settings.encryptionKeys)
    return settings.store === 'postgres' || options.pool !== undefined
      ? await openPostgresStore(app, settings, keyring, options.pool, abandoned.signal)
      : await openFileStore(app, settings, keyring, options.fs, app.hasPlugin('taskvault-config') ? 'TASK_STORAGE_DIR' : 'the storageDir option', abandoned.signal)
  })
  app.decorate('persistence', store)
  app.addHook('onClose', async () => store.close())
}, { name: 'taskvault-persistence', fastify: '5.x' })

async function openFileStore (app: FastifyInstance, settings: StoreSettings, keyring: Keyring | null, fs: FsSeam | undefined, source: string, abandoned: AbortSignal): Promise<SessionStore> {
  const store = new FileSessionStore({
    dir: settings.storageDir,
    fs,
    maxSessionBytes: settings.maxSessionBytes,
    maxWrites: settings.maxWrites,
    keyring,
    keepKeyChecks: true,
    lock: { refreshMs: settings.lockRefreshMs, staleMs: settings.lockStaleMs }
  })
  // The heartbeat's findings; subscribed before init so none is missed.
  store.events.on('lock', (event) => {
    if (event.type === 'recreated') app.log.warn({ lock: event.path }, 'The storage lock file was missing (deleted by hand or a cleanup script?); re-created it')
    else if (event.type === 'check-failed') app.log.error({ lock: event.path, err: event.err }, 'Could not check the storage lock; another server could take the folder over once the lock looks stale')
    else if (event.type === 'waiting') {
      app.log.warn({ lock: event.path, holder: event.holder, stale_in_ms: event.staleInMs },
        `The storage lock (${event.path}) names pid ${event.holder.pid} of this host name in another pid namespace: an earlier life of this container, or another container of the same name. ` +
        (event.guard
          ? 'It is a takeover\'s short-lived guard: waiting for it to go stale (TASK_LOCK_STALE_MS) before taking the lock over'
          : 'Waiting for it to go stale (TASK_LOCK_STALE_MS) before taking it over; if its holder touches it meanwhile, this server exits'))
    } else if (event.type === 'replaced') {
      app.log.error({ dir: event.error.dir },
        `The storage folder ${event.error.dir} is no longer the folder this server opened (an unmounted volume, or a folder deleted and made again): ` +
        'what is written there would be lost with it, so this server refuses every write from now on (503 LOCK_LOST, /ready 503); reads still work. Put the folder back, then restart this one')
    } else {
      app.log.error({ dir: event.error.dir, holder: event.error.holder, found: event.found },
        `Lost the storage lock of ${event.error.dir}: it now names ${event.found}. Another server may be writing to the folder, ` +
        'so this one refuses every write from now on (503 LOCK_LOST, /ready 503); reads still work. Stop one of them, then restart this one')
    }
  })
  // A lock of another pid namespace is waited for within the host's pluginTimeout, as a database
  // is (see openPostgresStore), so the host hears why; the standalone server has none.
  const bound = waitBound(app)
  const { replaced, folder, openMode, caseless } = await store.init({ deadline: performance.now() + bound.waitMs, signal: abandoned }).catch((err: unknown) => {
    // The boot stops here: say which setting to change, in the system's own words (mkdir's ENOENT, EACCES).
    if (err instanceof StorageError && err.cause instanceof Error) err.message = `storage folder ${store.dir} (${source}) cannot be used: ${err.cause.message}`
    if (err instanceof LockNotStaleError) {
      err.message = inTermsOf(app, STORE_SETTINGS, abandoned.aborted
        ? `${err.message}; the host closed while taskvault waited for it`
        : `${err.message}, past the host's pluginTimeout (taskvault waited ${bound.waitMs} ms of its ${bound.pluginTimeout} ms): ` +
          'raise pluginTimeout (or set it to 0) to wait for it, or lower TASK_LOCK_STALE_MS')
    }
    throw err
  })
  if (replaced?.why === 'dead') app.log.warn({ holder: replaced.holder }, 'Took over the storage lock of a server that is gone')
  else if (replaced !== null) {
    // Its server may be alive (on another host, or paused): if it comes back, it finds the lock taken and writes nothing more.
    app.log.warn({ holder: replaced.holder },
      'Took over a stale storage lock (not touched for TASK_LOCK_STALE_MS); its server may still be running on another host or be paused: if it resumes it refuses every write (503 LOCK_LOST)')
  }
  if (folder === 'adopted') app.log.info({ dir: store.dir }, 'Storage folder had no .taskvault marker and holds only session files: adopted it and wrote the marker')
  if (openMode !== null) {
    app.log.warn({ dir: store.dir, mode: openMode.toString(8) },
      `Storage folder ${store.dir} is accessible to its group or others (mode ${openMode.toString(8)}); taskvault leaves the mode of a folder it did not just create alone: chmod 700 it if only taskvault should read the sessions`)
  }
  if (caseless) {
    app.log.info({ dir: store.dir },
      `Storage folder ${store.dir} does not tell upper from lower case in file names: a new session whose id differs from an active one's only in case is refused (409 SESSION_ID_CASE_CONFLICT)`)
  }
  return store
}

/**
 * The PostgreSQL store. A database that is down at boot is waited for, with backoff, for
 * TASK_DB_CONNECT_TIMEOUT_MS; then the boot fails with one line naming where it tried.
 */
async function openPostgresStore (app: FastifyInstance, settings: StoreSettings, keyring: Keyring | null, pool: pg.Pool | undefined, abandoned: AbortSignal): Promise<SessionStore> {
  if (pool === undefined && settings.databaseUrl.trim() === '') {
    throw new InvalidDatabaseSettingError('DATABASE_URL', 'is required with TASK_STORE=postgres (postgres://user:password@host:5432/database)')
  }
  const common = {
    maxSessionBytes: settings.maxSessionBytes,
    keyring,
    keepKeyChecks: true,
    saveBatch: settings.dbSaveBatch,
    saveBatchBytes: settings.dbSaveBatchBytes,
    replicaId: settings.replicaId === '' ? defaultReplicaId() : settings.replicaId,
    leaseMs: settings.leaseMs,
    pingTimeoutMs: settings.dbPingTimeoutMs,
    onMigrationLockWait: (wait: MigrationLockWait) => {
      app.log.warn({ migration: wait.version, waited_ms: wait.waitedMs, retry_in_ms: wait.retryInMs },
        `Migration ${wait.version} (${wait.name}) waits for a lock on its tables that another session holds (a pg_dump, a long transaction?); ` +
        'it stepped back so the other replicas\' statements on them go on, and tries again')
    }
  }
  // Loaded here: a server on the file store never loads the pg driver.
  const { PostgresSessionStore } = await import('../services/store/postgres/postgres-store.js')
  const store = pool !== undefined
    ? new PostgresSessionStore({ ...common, pool, schema: settings.dbSchema })
    : new PostgresSessionStore({
      ...common,
      // Opening a connection is bounded like a statement: a request never waits longer on a database that does not answer.
      settings: { url: settings.databaseUrl, schema: settings.dbSchema, max: settings.dbPoolMax, statementTimeoutMs: settings.dbStatementTimeoutMs, connectTimeoutMs: settings.dbStatementTimeoutMs },
      onPoolError: (err) => app.log.warn({ err: { message: err.message } }, 'A PostgreSQL connection of the pool failed; it is replaced on the next query')
    })
  // What claiming the replica id found; subscribed before init so none is missed.
  store.events.on('replica-id', (event) => {
    if (event.type === 'waiting') {
      app.log.warn({ replica_id: store.replicaId, holder: event.holder, silent_ms: event.silentMs, wait_ms: event.waitMs },
        `TASK_REPLICA_ID '${store.replicaId}' was heard from ${event.silentMs} ms ago by another process; waiting up to ${event.waitMs} ms to see whether it still runs ` +
        '(the start is refused if it does: each replica needs an id of its own)')
    } else if (event.type === 'cleared') {
      app.log.warn({ replica_id: store.replicaId, holder: event.holder, silent_ms: event.silentMs },
        event.why === 'gone' ? 'Took over this replica id from an earlier process of this host that is gone (killed, or stopped with live-view events unpublished)' : 'Took over this replica id from a process silent past TASK_LEASE_MS')
    } else {
      app.log.error({ replica_id: store.replicaId },
        `Another process claimed this server's TASK_REPLICA_ID '${store.replicaId}', judging this one gone (silent past TASK_LEASE_MS: paused, or cut off from the database; ` +
        'or a second server uses the same id), and took its sessions over: this one refuses every write from now on (503 REPLICA_ID_TAKEN, /ready 503); reads still work. ' +
        'Restart it once only one server uses the id')
    }
  })
  store.events.on('restore-retry', ({ reason, waitMs }) => {
    app.log.warn({ database: store.location, retry_in_ms: waitMs, reason }, 'The database went away during the restore; trying again')
  })
  // Within the host's own pluginTimeout, so the host hears why (DATABASE_UNAVAILABLE) rather than that a plugin did not start in time.
  const waitMs = Math.min(settings.dbConnectTimeoutMs, waitBound(app).waitMs)
  const deadline = performance.now() + waitMs
  let lastReason: string | null = null
  for (let wait = CONNECT_RETRY_MS; ; wait = Math.min(wait * 2, CONNECT_RETRY_MAX_MS)) {
    try {
      // Bounded by what is left: an attempt on a database that takes connections and never
      // answers would otherwise run a whole connect or statement timeout past the deadline.
      const { applied, version } = await beforeDeadline(store.init({ deadline }), deadline, store.location)
      if (abandoned.aborted) {
        await store.close().catch(() => {})
        throw new DatabaseUnavailableError('the host closed before the database could be reached')
      }
      app.log.info({ database: store.location, migration: version, applied }, applied.length > 0 ? `Migrated the database to ${version}` : 'Database schema is current')
      return store
    } catch (err) {
      const left = deadline - performance.now()
      // An attempt cut off is the deadline itself (its timer may fire a hair before performance.now() says so).
      if (!(err instanceof DatabaseUnavailableError) || err.lasting || err instanceof AttemptOverdueError || left <= 0 || abandoned.aborted) {
        // An attempt cut off at the deadline may hold a connection that is still opening: the
        // store closes once it gives up (its own timeout), not holding the failure back.
        if (err instanceof AttemptOverdueError) store.close().catch(() => {})
        else await store.close().catch(() => {})
        if (err instanceof DatabaseUnavailableError && !err.lasting) {
          const bound = inTermsOf(app, STORE_SETTINGS, 'TASK_DB_CONNECT_TIMEOUT_MS')
          // The attempt cut off says only that it did not answer in time: the one before says why.
          const why = err instanceof AttemptOverdueError && lastReason !== null ? `${err.message} (the try before: ${lastReason})` : err.message
          throw new DatabaseUnavailableError(`could not reach the database ${pool === undefined ? redactUrl(settings.databaseUrl) : store.location} within ${waitMs < settings.dbConnectTimeoutMs ? `the host's pluginTimeout (${waitMs} ms of ${bound})` : `${bound} (${settings.dbConnectTimeoutMs} ms)`}: ${why}`, { cause: err })
        }
        throw err
      }
      lastReason = err.message
      app.log.warn({ database: store.location, retry_in_ms: Math.round(Math.min(wait, left)), reason: err.message }, 'The database cannot be reached yet; trying again')
      await sleep(Math.min(wait, left), undefined, { signal: abandoned }).catch(() => {})
    }
  }
}

/**
 * How long the store may wait at boot within the host's pluginTimeout (Fastify's default is 10 s;
 * the standalone server has none): a second less for the rest of the boot, or half of a shorter
 * one (never none, which no attempt meets); unbounded without one.
 */
function waitBound (app: FastifyInstance): { pluginTimeout: number, waitMs: number } {
  const pluginTimeout = Number(app.initialConfig.pluginTimeout ?? 0)
  return { pluginTimeout, waitMs: pluginTimeout > 0 ? Math.max(pluginTimeout / 2, pluginTimeout - 1000) : Number.POSITIVE_INFINITY }
}

/** An attempt to open the store still running at the boot's deadline. */
class AttemptOverdueError extends DatabaseUnavailableError {}

/** `attempt`'s outcome, or AttemptOverdueError once `deadline` (performance.now()) passes first; `attempt` is observed either way. */
async function beforeDeadline<T> (attempt: Promise<T>, deadline: number, location: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const overdue = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => { reject(new AttemptOverdueError(`${location} did not answer`)) }, Math.max(0, deadline - performance.now()))
  })
  attempt.catch(() => {})
  try {
    return await Promise.race([attempt, overdue])
  } finally {
    clearTimeout(timer)
  }
}

/** TASK_REPLICA_ID's default: the host and the process, in the characters the setting allows. */
function defaultReplicaId (): string {
  return `${hostname().replace(/[^A-Za-z0-9_.-]/gu, '-').slice(0, 100)}-${process.pid}`
}
