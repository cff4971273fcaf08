// Cold-cache helpers (cold section): dropping the kernel's page cache before a timed read, and
// describing the device behind a folder so a reader knows what "cold" meant on that machine.
import { execFileSync } from 'node:child_process'
import { readFileSync, readlinkSync, writeFileSync } from 'node:fs'

const DROP = '/proc/sys/vm/drop_caches'

/** Flushes dirty pages, then drops the page cache, dentries and inodes (root on Linux only). Throws when refused. */
export function dropCaches () {
  if (process.platform !== 'linux') throw Object.assign(new Error(`not Linux (${process.platform})`), { code: 'ENOTLINUX' })
  execFileSync('sync')
  writeFileSync(DROP, '3')
}

/** One try: null when caches can be dropped here, else why not (EACCES/EPERM/EROFS, not Linux, ...). */
export function probeDropCaches () {
  try {
    dropCaches()
    return null
  } catch (err) {
    const message = err.message.split('\n')[0]
    return err.code && !message.startsWith(err.code) ? `${err.code}: ${message}` : message
  }
}

/** "Cached:" of /proc/meminfo in MB (page cache), or null off Linux. */
export function cachedMB () {
  try {
    const m = /^Cached:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'))
    return m ? Math.round(Number(m[1]) / 1024) : null
  } catch { return null }
}

/** Pages of `files` resident in the page cache (fincore), or null when fincore is missing. */
export function residentPages (files) {
  try {
    const out = execFileSync('fincore', ['--noheadings', '--bytes', '--output=PAGES', ...files], { encoding: 'utf8' })
    return out.trim().split('\n').reduce((sum, line) => sum + Number(line.trim() || 0), 0)
  } catch { return null }
}

const readTrim = (file) => { try { return readFileSync(file, 'utf8').trim() } catch { return null } }

/** The filesystem and block device behind `dir` (df, /sys/class/block), and what kind of disk it is. */
export function describeDevice (dir) {
  const info = { dir, df: null, source: null, fstype: null, block_device: null, driver: null, kind: null, rotational: null, scheduler: null, model: null, size_gb: null }
  try {
    info.df = execFileSync('df', ['-PT', dir], { encoding: 'utf8' }).trim()
    const fields = info.df.split('\n').pop().trim().split(/\s+/)
    info.source = fields[0]
    info.fstype = fields[1]
  } catch (err) {
    info.df = `df failed: ${err.message.split('\n')[0]}`
  }
  if (info.fstype === 'tmpfs' || info.fstype === 'ramfs') {
    info.kind = `${info.fstype} (memory: dropping caches does not make it cold)`
    return info
  }
  if (info.fstype === 'overlay') info.kind = 'overlay (container layer; the device below is not resolved)'
  if (!info.source?.startsWith('/dev/')) return info
  let name = info.source.slice(5)
  try { name = readlinkSync(info.source).split('/').pop() } catch {} // /dev/mapper/x -> ../dm-0
  // A partition (vda1, nvme0n1p2) has its queue on the parent disk.
  const parent = readTrim(`/sys/class/block/${name}/partition`) === null ? name : readlinkSync(`/sys/class/block/${name}`).split('/').slice(-2, -1)[0]
  info.block_device = parent
  try { info.driver = readlinkSync(`/sys/class/block/${parent}/device/driver`).split('/').pop() } catch {}
  // Virtual disks often report rotational=1 whatever backs them; kept as the guest sees it.
  info.rotational = readTrim(`/sys/block/${parent}/queue/rotational`) === null ? null : readTrim(`/sys/block/${parent}/queue/rotational`) === '1'
  info.scheduler = readTrim(`/sys/block/${parent}/queue/scheduler`)
  info.model = readTrim(`/sys/block/${parent}/device/model`)
  const sectors = Number(readTrim(`/sys/block/${parent}/size`))
  if (sectors > 0) info.size_gb = Math.round(sectors * 512 / 1e9)
  const drivers = { virtio_blk: 'virtio disk (VM; the host may cache it: cold here means not in this guest\'s page cache)', nvme: 'NVMe SSD', sd: 'SCSI/SATA disk', xen_blkfront: 'Xen virtual disk' }
  if (info.kind === null) info.kind = drivers[info.driver] ?? (parent.startsWith('dm-') ? 'device-mapper volume' : parent.startsWith('nvme') ? 'NVMe SSD' : parent.startsWith('vd') ? 'virtio disk' : (info.driver ?? 'unknown'))
  return info
}
