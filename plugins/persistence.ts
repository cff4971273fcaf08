import fp from 'fastify-plugin'
import { FileSessionStore } from '../services/file-store.js'
import type { FsSeam } from '../services/fs-seam.js'
import type { SessionStore } from '../services/store.js'

declare module 'fastify' {
  interface FastifyInstance {
    persistence: SessionStore
  }
}

export interface PersistencePluginOptions {
  /** File-system seam, for fault injection in tests. */
  fs?: FsSeam
}

/** The session store: one durable JSON file per session under TASK_STORAGE_DIR. */
export default fp<PersistencePluginOptions>(async function persistencePlugin (app, options) {
  const config = app.config
  const store = new FileSessionStore({
    dir: config.TASK_STORAGE_DIR,
    fs: options.fs,
    lock: { refreshMs: config.TASK_LOCK_REFRESH_MS, staleMs: config.TASK_LOCK_STALE_MS }
  })
  const replaced = await store.init()
  if (replaced !== null) app.log.warn({ holder: replaced }, 'Took over the storage lock of a server that is gone')
  app.decorate('persistence', store as SessionStore)
  app.addHook('onClose', async () => store.close())
}, { name: 'taskvault-persistence', fastify: '5.x', dependencies: ['taskvault-config'] })
