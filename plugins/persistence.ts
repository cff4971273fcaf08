import { Type, type Static } from '@sinclair/typebox'
import fp from 'fastify-plugin'
import { FileSessionStore } from '../services/store/file-store.js'
import { Keyring } from '../services/store/keyring.js'
import type { FsSeam } from '../services/store/fs-seam.js'
import type { SessionStore } from '../services/store/store.js'
import { STORE_SETTINGS, resolveSettings, settingOptions } from '../schemas/options.js'
import { appSettings, checkOptions } from './options.js'

declare module 'fastify' {
  interface FastifyInstance {
    persistence: SessionStore
  }
}

export const PersistenceOptionsSchema = Type.Object({
  ...settingOptions(STORE_SETTINGS).properties,
  /** File-system seam, for fault injection in tests. */
  fs: Type.Optional(Type.Unsafe<FsSeam>(Type.Object({})))
}, { additionalProperties: false })

export type PersistencePluginOptions = Static<typeof PersistenceOptionsSchema>

/** The session store: one durable JSON file per session in the storage folder. */
export default fp<PersistencePluginOptions>(async function persistencePlugin (app, options) {
  checkOptions('taskvault-persistence', PersistenceOptionsSchema, options)
  const settings = resolveSettings(STORE_SETTINGS, options, appSettings(app))
  const store = new FileSessionStore({
    dir: settings.storageDir,
    fs: options.fs,
    maxSessionBytes: settings.maxSessionBytes,
    keyring: Keyring.parse(settings.encryptionKeys),
    lock: { refreshMs: settings.lockRefreshMs, staleMs: settings.lockStaleMs }
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
