import { parentPort, workerData } from 'node:worker_threads'
import { Keyring } from './keyring.js'
import { READY, readBatch, type ReadRequest } from './read-batch.js'

/** What a reader thread is started with. */
export interface ReaderData {
  /** A keyring's entries, when sealed files are to be opened here. */
  keys: Array<[string, Uint8Array]> | null
}

const keys = (workerData as ReaderData | undefined)?.keys ?? null
const keyring = keys === null ? null : Keyring.fromEntries(keys)

parentPort?.on('message', (request: ReadRequest) => {
  const response = readBatch(request, keyring)
  parentPort?.postMessage(response, [response.data.buffer as ArrayBuffer])
})
parentPort?.postMessage(READY)
