// The floor: the raw durable save sequence the README promises, with nothing around it.
//   open(temp, 'wx', 0o600) + write + fsync + close + rename(temp, target) + fsync(folder)
import { constants } from 'node:fs'
import fs from 'node:fs'
import { open, rename } from 'node:fs/promises'
import { join } from 'node:path'

let seq = 0

/** The save without the folder fsync: open(temp) + write + fsync + close + rename. Less than the contract asks. */
export async function rawFileSave (dir, name, data) {
  const temp = join(dir, `.${name}.${process.pid}.${++seq}.floor.tmp`)
  const handle = await open(temp, 'wx', 0o600)
  try {
    await handle.write(data, 0, data.length, 0)
    await handle.sync()
  } finally {
    await handle.close()
  }
  await rename(temp, join(dir, name))
}

/** One durable save of `data` to `<dir>/<name>` with the promise API (what a server can use): rawFileSave, then the folder fsynced. */
export async function rawDurableSave (dir, name, data) {
  await rawFileSave(dir, name, data)
  const folder = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY)
  try {
    await folder.sync()
  } finally {
    await folder.close()
  }
}

/** The same sequence with blocking calls: no thread-pool hops. Informational only (a server cannot block). */
export function rawDurableSaveSync (dir, name, data) {
  const temp = join(dir, `.${name}.${process.pid}.${++seq}.floor.tmp`)
  const fd = fs.openSync(temp, 'wx', 0o600)
  try {
    fs.writeSync(fd, data, 0, data.length, 0)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
  fs.renameSync(temp, join(dir, name))
  const dfd = fs.openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY)
  try {
    fs.fsyncSync(dfd)
  } finally {
    fs.closeSync(dfd)
  }
}
