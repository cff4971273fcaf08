import type { IncomingMessage } from 'node:http'
import { BlockList, isIP } from 'node:net'

const LOOPBACK = new BlockList()
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4')
LOOPBACK.addAddress('::1', 'ipv6')

/** Whether `host` (a name or an address, without port or brackets) can only mean this machine. */
export function isLoopback (host: string): boolean {
  const name = host.toLowerCase().replace(/\.$/u, '')
  // RFC 6761: browsers resolve localhost and every *.localhost to loopback themselves, never through DNS.
  if (name === 'localhost' || name.endsWith('.localhost')) return true
  const family = isIP(name)
  return family !== 0 && LOOPBACK.check(name, family === 6 ? 'ipv6' : 'ipv4')
}

/** The host name of a Host header value (`name:port`, `[v6]:port`), lower case; null when it has none. */
export function hostName (header: string): string | null {
  const value = header.trim().toLowerCase()
  const bracketed = /^\[([^\]]+)\](?::\d*)?$/u.exec(value)
  if (bracketed !== null) return bracketed[1] as string
  const name = value.replace(/:\d*$/u, '').replace(/\.$/u, '')
  return name === '' ? null : name
}

/**
 * The check of a server that listens on loopback with no API key: a web page the user opens
 * can reach it only through DNS rebinding (its own name made to point at 127.0.0.1, so the page
 * is same-origin and may send JSON), and then its requests carry that name as their Host. Such
 * requests are refused; addresses, loopback names and `allowed` (TASK_ALLOWED_HOSTS, written as a Host
 * header's name: a port or brackets are left out) are answered. Null when there is nothing to
 * check: API keys stop such a page (`*` turns the check off too). `listening`: the address
 * listened on (the one given to listen(), which a host of buildApp may choose), checked per
 * request: a server listening beyond loopback is reached under names nobody knows here, so it
 * is checked only once names are listed (a container listening on 0.0.0.0 behind a port
 * published on the host's loopback: `TASK_ALLOWED_HOSTS=localhost` turns the check on).
 */
export function hostCheck (listening: () => string, apiKeys: string, allowed: string): ((req: IncomingMessage) => Error | null) | null {
  const names = allowed.split(',').map((name) => hostName(name)).filter((name) => name !== null)
  if (apiKeys.trim() !== '' || names.includes('*')) return null
  const extra = new Set(names)
  return (req) => {
    if (extra.size === 0 && !isLoopback(listening())) return null
    // An absolute-form target (`GET http://name/...`) names the host, and RFC 9112 has the Host header ignored then.
    const header = targetAuthority(req.url) ?? req.headers.host
    // No Host: an HTTP/1.0 client (1.1 ones are refused for it first), never a browser.
    if (header === undefined) return null
    const name = hostName(header)
    // An address is no rebinding page's Host (that is its own name): probes and scrapes by pod IP pass.
    if (name !== null && (isIP(name) !== 0 || isLoopback(name) || extra.has(name))) return null
    return Object.assign(new Error(`with no API key this server answers only to addresses, loopback names and TASK_ALLOWED_HOSTS, not '${header.slice(0, 100)}' ` +
      '(a web page could reach it under its own name by DNS rebinding); add the name to TASK_ALLOWED_HOSTS, or set TASK_API_KEYS'), { statusCode: 403, code: 'HOST_NOT_ALLOWED' })
  }
}

/** The authority of an absolute-form request target, or null for the usual path (origin-form). */
function targetAuthority (target: string | undefined): string | null {
  if (target === undefined || target.startsWith('/')) return null
  const match = /^[a-z][a-z0-9+.-]*:\/\/([^/?#]*)/iu.exec(target)
  return match === null ? null : (match[1] as string).replace(/^.*@/u, '')
}
