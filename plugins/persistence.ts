import { Type } from '@sinclair/typebox'
import fp from 'fastify-plugin'
import { FileSessionStore } from '../services/store/file-store.js'
import { Keyring } from '../services/store/keyring.js'
import type { FsSeam } from '../services/store/fs-seam.js'
import type { SessionStore } from '../services/store/store.js'
import { checkOptions, fromSetting, setting } from './options.js'

declare module 'fastify' {
  interface FastifyInstance {
    persistence: SessionStore
  }
}

export interface PersistencePluginOptions {
  /** Folder of the session files (TASK_STORAGE_DIR). */
  storageDir?: string
  /** How often the storage lock is touched (TASK_LOCK_REFRESH_MS). */
  lockRefreshMs?: number
  /** A lock untouched for this long is taken over (TASK_LOCK_STALE_MS). */
  lockStaleMs?: number
  /** File-system seam, for fault injection in tests. */
  fs?: FsSeam
  /** Largest stored form of one session, in bytes (TASK_MAX_SESSION_BYTES). */
  maxSessionBytes?: number
  /** Keys that seal session content at rest (TASK_ENCRYPTION_KEYS): `kid:base64key,...` or `@/path`. */
  encryptionKeys?: string
}

export const PersistenceOptionsSchema = Type.Object({
  storageDir: fromSetting('TASK_STORAGE_DIR'),
  lockRefreshMs: fromSetting('TASK_LOCK_REFRESH_MS'),
  lockStaleMs: fromSetting('TASK_LOCK_STALE_MS'),
  fs: Type.Optional(Type.Object({})),
  maxSessionBytes: fromSetting('TASK_MAX_SESSION_BYTES'),
  encryptionKeys: fromSetting('TASK_ENCRYPTION_KEYS')
}, { additionalProperties: false })

/** The session store: one durable JSON file per session in the storage folder. */
export default fp<PersistencePluginOptions>(async function persistencePlugin (app, options) {
  checkOptions('taskvault-persistence', PersistenceOptionsSchema, options)
  const store = new FileSessionStore({
    dir: options.storageDir ?? setting(app, 'TASK_STORAGE_DIR'),
    fs: options.fs,
    maxSessionBytes: options.maxSessionBytes ?? setting(app, 'TASK_MAX_SESSION_BYTES'),
    keyring: Keyring.parse(options.encryptionKeys ?? setting(app, 'TASK_ENCRYPTION_KEYS')),
    lock: {
      refreshMs: options.lockRefreshMs ?? setting(app, 'TASK_LOCK_REFRESH_MS'),
      staleMs: options.lockStaleMs ?? setting(app, 'TASK_LOCK_STALE_MS')
    }
  })
  // The heartbeat's findings; subscribed before init so none is missed.
  store.events.on('lock', (event) => {
    if (event.type === 'recreated') app.log.warn({ lock: event.path }, 'The storage lock file was missing (deleted by hand or a cleanup script?); re-created it')
    else if (event.type === 'check-failed') app.log.error({ lock: event.path, err: event.err }, 'Could not check the storage lock; another server could take the folder over once the lock looks stale')
    else {
      app.log.error({ dir: event.error.dir, holder: event.error.holder, found: event.found },
        `Lost the storage lock of ${event.error.dir}: it now names ${event.found}. Another server may be writing to the folder, ` +
        'so this one refuses every write from now on (503 LOCK_LOST, /ready 503); reads still work. Stop one of them, then restart this one')
    }
  })
  const { replaced, folder, openMode } = await store.init()
  if (replaced !== null) app.log.warn({ holder: replaced }, 'Took over the storage lock of a server that is gone')
  if (folder === 'adopted') app.log.info({ dir: store.dir }, 'Storage folder had no .taskvault marker and holds only session files: adopted it and wrote the marker')
  if (openMode !== null) {
    app.log.warn({ dir: store.dir, mode: openMode.toString(8) },
      `Storage folder ${store.dir} is accessible to its group or others (mode ${openMode.toString(8)}); taskvault leaves the mode of a folder it did not just create alone: chmod 700 it if only taskvault should read the sessions`)
  }
  app.decorate('persistence', store as SessionStore)
  app.addHook('onClose', async () => store.close())
}, { name: 'taskvault-persistence', fastify: '5.x' })
