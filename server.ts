import type { FastifyInstance } from 'fastify'
import { buildApp } from './app.js'
import { environmentWarnings, loadConfig } from './plugins/config.js'
import { listenFailure } from './http/listen-error.js'
import { LogDestination } from './http/log-destination.js'
import { loggerOptions } from './http/logger-options.js'
import type { Config } from './schemas/config.js'
import { operatorMessage, UnsavedChangesLostError } from './services/errors.js'
import { releaseHeldSync } from './services/store/storage-lock.js'

/** Loads config, restores sessions, listens, and drains on SIGTERM/SIGINT. */
async function main (): Promise<void> {
  let app: FastifyInstance | undefined
  // SIGTERM or SIGINT while starting (a long restore, a database not up yet): the start is
  // finished or given up, then the server closes (releasing its storage lock) and exits 0,
  // within TASK_SHUTDOWN_GRACE_MS; nothing runs yet that needs more.
  let stopped: NodeJS.Signals | null = null
  /** The settings, once read; with the file store, the app being built may hold the folder's lock. */
  let config: Config | undefined
  // Past the grace period the process ends before its store could close: the folder's lock goes with it.
  const exitNow = (): never => {
    const what = `taskvault: the start did not finish within TASK_SHUTDOWN_GRACE_MS (${config?.TASK_SHUTDOWN_GRACE_MS} ms) after ${stopped}; exiting without closing (interrupted saves leave temp files, removed at the next start)`
    if (app !== undefined) app.log.warn(what)
    else console.error(what)
    if (config?.TASK_STORE === 'file') releaseHeldSync(config.TASK_STORAGE_DIR)
    process.exit(0)
  }
  const early = (signal: NodeJS.Signals): void => {
    if (stopped !== null) return
    stopped = signal
    if (app === undefined) {
      // Reading settings, or waiting for a database: nothing held, so the process just ends.
      if (config?.TASK_STORE !== 'file') {
        console.error(`taskvault: ${signal} while starting; exiting`)
        process.exit(0)
      }
      // The folder is being opened (its lock taken): the app is closed once built (below).
      console.error(`taskvault: ${signal} while starting; exiting once the storage folder is open`)
      setTimeout(exitNow, config.TASK_SHUTDOWN_GRACE_MS).unref()
      return
    }
    app.log.info({ signal }, 'Shutting down while starting')
    // The restore ends, but no archive pass starts after it, nor any run: the server is only closing.
    app.archiver.stop().catch(() => {})
    app.taskManager.stopBeforeStart()
    setTimeout(exitNow, app.taskvaultConfig.TASK_SHUTDOWN_GRACE_MS).unref()
  }
  // Listened to for the life of the process: a signal with no listener, even for a moment between
  // two, takes Node's default and ends the process at once (npm's copy of a Ctrl-C, say).
  let onSignal: (signal: NodeJS.Signals) => void = early
  for (const signal of STOP_SIGNALS) process.on(signal, (signal: NodeJS.Signals) => { onSignal(signal) })
  try {
    config = await loadConfig()
    const log = new LogDestination({ maxQueuedBytes: config.LOG_QUEUE_BYTES })
    // Every exit (process.exit included) writes what is still queued, once: never waiting on a failing log.
    process.once('exit', () => { log.flushSync() })
    app = await buildApp({ config, readEnvironment: false, logger: loggerOptions(config, log), processMetrics: true })
    for (const warning of environmentWarnings()) app.log.warn(warning)
    // A signal while it was built: closed now (its lock released), no restore started.
    if (stopped !== null) {
      await app.close().catch(() => {})
      process.exit(0)
    }
    await app.ready()
  } catch (err) {
    if (stopped !== null) {
      await app?.close().catch(() => {})
      process.exit(0)
    }
    return await cannotStart(app, operatorMessage(err as Error))
  }
  if (stopped !== null) {
    await app.close().catch(() => {})
    process.exit(0)
  }
  const { PORT, HOST, TASK_SHUTDOWN_GRACE_MS, TASK_EVENTS_CLOSE_MS } = app.taskvaultConfig
  // A rejection nobody observed is a bug, logged loudly with its stack. It does not take the
  // server down: every acknowledged change is already on disk, and exiting would interrupt every
  // other session's running task. A thrown exception still does (synchronous state is unknown).
  const log = app.log
  process.on('unhandledRejection', (reason) => {
    log.error({ err: reason }, 'unhandled promise rejection (a bug: please report it); the server keeps running')
  })
  // The grace period covers running tasks; the extra time covers flushing writes.
  onSignal = closeOnce(app, TASK_SHUTDOWN_GRACE_MS + TASK_EVENTS_CLOSE_MS + 10_000)
  try {
    await app.listen({ port: PORT, host: HOST })
  } catch (err) {
    await cannotStart(app, listenFailure(err as NodeJS.ErrnoException, PORT, HOST))
  }
}

/**
 * Closes the app and logs any failure of the close (releasing the storage lock) besides the
 * sessions whose unsaved changes (TASK_AUTO_SAVE=false) could not be written, which the task
 * manager's plugin logs, once each. False if anything failed.
 */
async function closeReporting (app: FastifyInstance): Promise<boolean> {
  let failure: unknown = null
  await app.close().catch((err: unknown) => { failure = err })
  const lost = app.taskManager.registry.lostChanges()
  // An UnsavedChangesLostError says no more than the task manager logged already.
  if (failure !== null && !(failure instanceof UnsavedChangesLostError)) app.log.error({ err: failure }, 'Shutdown did not finish cleanly')
  return failure === null && lost.length === 0
}

/** The signals that stop the server gracefully: a supervisor's, Ctrl-C's, a closed terminal's. */
const STOP_SIGNALS: NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP']

/**
 * How soon after the signal that began shutdown the same signal is still that one: Ctrl-C under
 * `npm start` reaches the server twice (the terminal's, then npm's copy, milliseconds apart),
 * while a person pressing it again to stop waiting does so later.
 */
const SAME_SIGNAL_MS = 250

/**
 * Shuts down on the first stop signal or uncaught exception: closes the app and exits 0, or 1 if
 * anything failed or `boundMs` passed first. A second signal (not a copy of the first) or a second
 * exception exits 1 at once. Returns the signal handler.
 */
function closeOnce (app: FastifyInstance, boundMs: number): (signal: NodeJS.Signals) => void {
  let first: { signal: NodeJS.Signals | null, at: number } | null = null
  const close = (signal: NodeJS.Signals | null, err?: unknown): void => {
    const begun = { signal, at: performance.now() }
    first = begun
    // Counted from when the loop is free again: a copy that arrived while the close's first,
    // synchronous part ran (thousands of waiting runs aborted) is read only after it.
    setImmediate(() => { begun.at = performance.now() })
    if (err !== undefined) app.log.error({ err }, 'fatal error; shutting down')
    else app.log.info({ signal }, 'shutting down')
    // Held (not unref'd): a close left waiting on nothing still ends here.
    setTimeout(() => {
      app.log.error(`killed by timeout (${boundMs}ms)`)
      process.exit(1)
    }, boundMs)
    closeReporting(app).then((clean) => { process.exit(clean && err === undefined ? 0 : 1) }, (failure: unknown) => {
      app.log.error({ err: failure }, 'Shutdown did not finish cleanly')
      process.exit(1)
    })
  }
  process.on('uncaughtException', (err) => {
    if (first === null) return close(null, err)
    app.log.error({ err }, 'second error, exiting')
    process.exit(1)
  })
  return (signal) => {
    if (first === null) return close(signal)
    if (signal === first.signal && performance.now() - first.at < SAME_SIGNAL_MS) return
    app.log.error(`second ${signal}, exiting`)
    process.exit(1)
  }
}

/** Bad settings, an unusable storage folder or a port that is taken: one line saying which, and exit 1. */
async function cannotStart (app: FastifyInstance | undefined, reason: string): Promise<never> {
  console.error(`taskvault: cannot start: ${reason}`)
  if (app !== undefined) {
    // A start that failed after the storage lock was taken (a restore that hit EACCES, a taken
    // port) must not leave the lock behind; bounded like a shutdown.
    setTimeout(() => process.exit(1), app.taskvaultConfig.TASK_SHUTDOWN_GRACE_MS + 10_000).unref()
    await app.close().catch(() => {})
  }
  process.exit(1)
}

await main()
