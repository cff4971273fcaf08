/**
 * Faults on a real folder, through the file store's fs seam (services/store/fs-seam.ts): one
 * step of the store's writes can fail with an errno (once, n times, or until healed), be held
 * until released, and every step is counted. Not a *.test.ts file: tap does not run it.
 *
 * The steps, and which calls they act on unless a fault or hold says otherwise:
 * - open, write, sync: the temp file of a save (`.<id>.<pid>.<seq>.tmp`; not init's probe or
 *   marker). A failing write lands half the bytes first, as a full disk does.
 * - rename: a rename from such a temp file (a save's last step).
 * - dirsync: the fsync of a folder (after a rename or unlink: the change may have landed).
 * - unlink: any unlink (a delete, a temp file's cleanup).
 */
import { constants } from 'node:fs'
import type { FileHandle } from 'node:fs/promises'
import { basename } from 'node:path'
import { nodeFs, type FsSeam } from '../services/store/fs-seam.js'

export type Where = 'open' | 'write' | 'sync' | 'rename' | 'dirsync' | 'unlink'

export const errno = (code: string): NodeJS.ErrnoException => Object.assign(new Error(`${code}: injected fault`), { code })

/** A save's temp file: not init's write probe nor the marker's temp file. */
export function isSaveTemp (path: string): boolean {
  const name = basename(path)
  return name.endsWith('.tmp') && !name.startsWith('.probe.') && !name.startsWith('.taskvault.')
}

/** Temp files of one session's saves. */
export const tempOf = (sessionId: string) => (path: string): boolean => isSaveTemp(path) && basename(path).startsWith(`.${sessionId}.`)

const DEFAULT_TARGET: Record<Where, (path: string) => boolean> = {
  open: isSaveTemp,
  write: isSaveTemp,
  sync: isSaveTemp,
  rename: isSaveTemp,
  dirsync: () => true,
  unlink: () => true
}

export interface Selector {
  /** Which calls count (the path opened, renamed from, or unlinked); the step's default targets when omitted. */
  path?: (path: string) => boolean
  /** Matching calls let through first. */
  skip?: number
  /** Matching calls acted on after those; Infinity (the default): until healed or released. */
  times?: number
}

/** A hold: matching calls wait until `release()`. */
export interface Gate {
  /** Calls held so far (released ones included). */
  held: () => number
  /** Resolves once a call is held. */
  reached: Promise<void>
  /** Lets every held call go on, and holds no more. */
  release: () => void
}

export interface FaultFs extends FsSeam {
  /** Fails matching `where` calls with `code`, replacing the fault armed there before. */
  fail: (where: Where, code: string, select?: Selector) => void
  /** Ends the faults at `where`, or every fault. */
  heal: (where?: Where) => void
  /** Holds matching `where` calls until released. */
  hold: (where: Where, select?: Selector) => Gate
  /** Calls per step: every open (but of folders), rename and unlink; write and sync on save temp files; dirsync on folders. */
  readonly calls: Record<Where, number>
  /** Faults thrown, and the bytes a failing write landed first. */
  readonly fired: Array<{ code: string, where: Where, partial: number }>
}

interface Rule {
  where: Where
  path: (path: string) => boolean
  skip: number
  left: number
}

/** The real file system (nodeFs, or `base`) with faults and holds to arm; nothing is armed at first. */
export function faultFs (base: FsSeam = nodeFs): FaultFs {
  const faults: Array<Rule & { code: string }> = []
  const holds: Array<Rule & { gate: Promise<void>, count: number, reached: () => void }> = []
  const calls: Record<Where, number> = { open: 0, write: 0, sync: 0, rename: 0, dirsync: 0, unlink: 0 }
  const fired: FaultFs['fired'] = []

  const takes = (rule: Rule, where: Where, path: string): boolean => {
    if (rule.where !== where || rule.left <= 0 || !rule.path(path)) return false
    if (rule.skip > 0) {
      rule.skip--
      return false
    }
    rule.left--
    return true
  }

  /** Counts the call, waits while it is held, then says which fault (if any) it meets. */
  const step = async (where: Where, path: string): Promise<string | null> => {
    calls[where]++
    for (const hold of [...holds]) {
      if (takes(hold, where, path)) {
        hold.count++
        hold.reached()
        await hold.gate
      }
    }
    const fault = faults.find((rule) => takes(rule, where, path))
    return fault === undefined ? null : fault.code
  }

  const throwing = (where: Where, code: string): never => {
    fired.push({ code, where, partial: 0 })
    throw errno(code)
  }

  const rule = (where: Where, select: Selector = {}): Rule => ({
    where, path: select.path ?? DEFAULT_TARGET[where], skip: select.skip ?? 0, left: select.times ?? Number.POSITIVE_INFINITY
  })

  const heal = (where?: Where): void => {
    for (let i = faults.length - 1; i >= 0; i--) if (where === undefined || faults[i]!.where === where) faults.splice(i, 1)
  }

  const open = (async (...args: Parameters<typeof nodeFs.open>) => {
    const [path, flags] = args
    const name = String(path)
    const isDir = typeof flags === 'number' && (flags & constants.O_DIRECTORY) !== 0
    const code = isDir ? null : await step('open', name)
    if (code !== null) throwing('open', code)
    const handle = await base.open(...args)
    if (isDir) {
      const sync = handle.sync.bind(handle)
      handle.sync = async () => {
        const code = await step('dirsync', name)
        if (code !== null) throwing('dirsync', code)
        return sync()
      }
    } else if (isSaveTemp(name)) {
      const writeFile = handle.writeFile.bind(handle)
      handle.writeFile = (async (data: Uint8Array, ...rest: unknown[]) => {
        const code = await step('write', name)
        if (code === null) return (writeFile as (...a: unknown[]) => Promise<void>)(data, ...rest)
        // A partial write, as a real full disk does: half the bytes land, then the error.
        const { bytesWritten } = await handle.write(data, 0, Math.floor(data.length / 2), 0)
        fired.push({ code, where: 'write', partial: bytesWritten })
        throw errno(code)
      }) as FileHandle['writeFile']
      const sync = handle.sync.bind(handle)
      handle.sync = async () => {
        const code = await step('sync', name)
        if (code !== null) throwing('sync', code)
        return sync()
      }
    }
    return handle
  }) as typeof nodeFs.open

  const rename = (async (...args: Parameters<typeof nodeFs.rename>) => {
    const code = await step('rename', String(args[0]))
    if (code !== null) throwing('rename', code)
    return base.rename(...args)
  }) as typeof nodeFs.rename

  const unlink = (async (...args: Parameters<typeof nodeFs.unlink>) => {
    const code = await step('unlink', String(args[0]))
    if (code !== null) throwing('unlink', code)
    return base.unlink(...args)
  }) as typeof nodeFs.unlink

  return {
    ...base,
    open,
    rename,
    unlink,
    calls,
    fired,
    fail: (where, code, select) => {
      heal(where)
      faults.push({ ...rule(where, select), code })
    },
    heal,
    hold: (where, select) => {
      let letGo!: () => void
      let reached!: () => void
      const gate = new Promise<void>((resolve) => { letGo = resolve })
      const first = new Promise<void>((resolve) => { reached = resolve })
      const hold = { ...rule(where, select), gate, count: 0, reached }
      holds.push(hold)
      return {
        held: () => hold.count,
        reached: first,
        release: () => {
          const index = holds.indexOf(hold)
          if (index !== -1) holds.splice(index, 1)
          letGo()
        }
      }
    }
  }
}

/** A real folder whose first move into `archive/` waits until `release()`: an archive pass caught mid-move. */
export function heldArchiveMove (base: FsSeam = nodeFs): { fs: FsSeam, held: () => boolean, release: () => void } {
  let release: () => void = () => {}
  const gate = new Promise<void>((resolve) => { release = resolve })
  let held = false
  const fs: FsSeam = {
    ...base,
    rename: async (from, to) => {
      if (String(to).includes('/archive/') && !held) {
        held = true
        await gate
      }
      return base.rename(from, to)
    }
  }
  return { fs, held: () => held, release }
}
