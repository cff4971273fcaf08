import { closeSync, constants, fstatSync, openSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { parentPort } from 'node:worker_threads'

/** A batch to read: file names in `dir`. */
export interface ReadRequest {
  id: number
  dir: string
  names: string[]
}

/**
 * What came back: the files' bytes end to end in `data` (transferred, not copied), and per file
 * either its [offset, length] in `data` or the errno code that stopped its read.
 */
export interface ReadResponse {
  id: number
  files: Array<{ name: string, offset: number, length: number } | { name: string, code: string }>
  data: Uint8Array
}

// O_NOFOLLOW: a symlink swapped in after readdir is refused, not followed.
const FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW

/**
 * A reader thread for restore. Blocking reads here cost one system call each, with no
 * thread-pool round trips, and the main thread parses one batch while this reads the next.
 */
function readBatch ({ id, dir, names }: ReadRequest): ReadResponse {
  const buffers: Buffer[] = []
  const files: ReadResponse['files'] = []
  let offset = 0
  for (const name of names) {
    let fd: number | null = null
    try {
      fd = openSync(join(dir, name), FLAGS)
      if (!fstatSync(fd).isFile()) {
        files.push({ name, code: 'ENOTREG' })
        continue
      }
      const bytes = readFileSync(fd)
      buffers.push(bytes)
      files.push({ name, offset, length: bytes.length })
      offset += bytes.length
    } catch (err) {
      files.push({ name, code: (err as NodeJS.ErrnoException).code ?? 'EIO' })
    } finally {
      if (fd !== null) closeSync(fd)
    }
  }
  const data = new Uint8Array(offset)
  let at = 0
  for (const bytes of buffers) {
    data.set(bytes, at)
    at += bytes.length
  }
  return { id, files, data }
}

parentPort?.on('message', (request: ReadRequest) => {
  const response = readBatch(request)
  parentPort?.postMessage(response, [response.data.buffer as ArrayBuffer])
})
