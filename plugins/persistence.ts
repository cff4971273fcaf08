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
  const store = new FileSessionStore({ dir: app.config.TASK_STORAGE_DIR, fs: options.fs })
  await store.init()
  app.decorate('persistence', store as SessionStore)
  app.addHook('onClose', async () => store.close())
}, { name: 'taskvault-persistence', fastify: '5.x', dependencies: ['taskvault-config'] })
