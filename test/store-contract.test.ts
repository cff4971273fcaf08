/** The SessionStore contract (store-contract.ts) held against the file store, on a temp folder per test. */
import { randomBytes } from 'node:crypto'
import t from 'tap'
import { FileSessionStore } from '../services/store/file-store.js'
import { Keyring } from '../services/store/keyring.js'
import { tempDir } from './helper.js'
import { storeContract } from './store-contract.js'

storeContract(t, 'file store', async (t, { keyring, maxSessionBytes }) => {
  const dir = await tempDir(t)
  const open = async (): Promise<FileSessionStore> => {
    const store = new FileSessionStore({ dir, keyring, maxSessionBytes, lock: { refreshMs: 60_000, staleMs: 180_000 } })
    await store.init()
    t.teardown(() => store.close())
    return store
  }
  return { store: await open(), reopen: open }
}, { keyring: Keyring.fromEntries([['k1', randomBytes(32)]]) })
