/**
 * A TCP proxy between a client and a server (PostgreSQL in the fault tests) that can pass
 * traffic, drop every connection, or stall them: what a network partition looks like from
 * either side. Not a *.test.ts file: tap does not run it.
 */
import net from 'node:net'

export interface TcpProxy {
  port: number
  /** Forward traffic: new connections go through, stalled ones carry on where they stopped. */
  pass(): void
  /** Destroy every open connection and refuse new ones (accepted and closed at once). */
  drop(): void
  /** Stop forwarding on open connections, and accept new ones without forwarding: nothing arrives, nothing fails. */
  stall(): void
  /**
   * Stall one open connection only, the one whose link to the server leaves from `localPort`
   * (pg_stat_activity's client_port): a connection gone half-open while the others work. False when there is none.
   */
  stallUpstream(localPort: number): boolean
  /** Open connections through the proxy. */
  connections(): number
  close(): Promise<void>
}

type Mode = 'pass' | 'drop' | 'stall'

interface Link {
  client: net.Socket
  /** null while a connection accepted during a stall waits for pass(). */
  upstream: net.Socket | null
}

export async function startProxy (targetPort: number, targetHost = '127.0.0.1'): Promise<TcpProxy> {
  let mode: Mode = 'pass'
  const links = new Set<Link>()

  const end = (link: Link): void => {
    links.delete(link)
    link.client.destroy()
    link.upstream?.destroy()
  }

  // Written by hand rather than with pipe(): pipe() resumes a source on 'drain', which would undo a stall.
  const forward = (from: net.Socket, to: net.Socket): void => {
    from.on('data', (chunk: Buffer) => {
      if (to.write(chunk)) return
      from.pause()
      to.once('drain', () => { if (mode === 'pass') from.resume() })
    })
  }

  const connectUpstream = (link: Link): void => {
    const upstream = net.connect(targetPort, targetHost)
    link.upstream = upstream
    upstream.on('error', () => end(link))
    upstream.on('close', () => end(link))
    forward(link.client, upstream)
    forward(upstream, link.client)
  }

  const server = net.createServer((client) => {
    if (mode === 'drop') {
      client.destroy()
      return
    }
    const link: Link = { client, upstream: null }
    links.add(link)
    client.on('error', () => end(link))
    client.on('close', () => end(link))
    // While stalled the client socket is left unread: what it sends waits in its buffers.
    if (mode === 'pass') connectUpstream(link)
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  const port = (server.address() as net.AddressInfo).port

  return {
    port,
    pass () {
      mode = 'pass'
      for (const link of links) {
        if (link.upstream === null) connectUpstream(link)
        else {
          link.client.resume()
          link.upstream.resume()
        }
      }
    },
    drop () {
      mode = 'drop'
      for (const link of [...links]) end(link)
    },
    stall () {
      mode = 'stall'
      for (const link of links) {
        link.client.pause()
        link.upstream?.pause()
      }
    },
    stallUpstream (localPort) {
      for (const link of links) {
        if (link.upstream?.localPort !== localPort) continue
        link.client.pause()
        link.upstream.pause()
        return true
      }
      return false
    },
    connections: () => links.size,
    async close () {
      for (const link of [...links]) end(link)
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}
