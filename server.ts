import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.js'

/** Loads config, restores sessions, listens, and drains on SIGTERM/SIGINT. */
async function main (): Promise<void> {
  let app
  try {
    app = await buildApp({ logger: { level: 'info', redact: ['req.headers.authorization'] } })
    await app.ready()
  } catch (err) {
    // Bad settings or an unusable storage folder: say which, and exit 1.
    console.error(`taskvault: cannot start: ${(err as Error).message}`)
    process.exit(1)
  }
  const { PORT, HOST, TASK_SHUTDOWN_GRACE_MS } = app.config
  // The grace period covers running tasks; the extra time covers flushing writes.
  closeWithGrace({ delay: TASK_SHUTDOWN_GRACE_MS + 10_000 }, async ({ signal, err }) => {
    if (err !== undefined) app.log.error({ err }, 'fatal error; shutting down')
    else app.log.info({ signal }, 'shutting down')
    await app.close()
  })
  await app.listen({ port: PORT, host: HOST })
}

await main()
