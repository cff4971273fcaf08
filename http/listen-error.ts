/**
 * Why the server could not listen, as a sentence naming the setting to change: the socket's
 * error alone ("listen EADDRINUSE: address already in use 127.0.0.1:7000") names neither.
 */
export function listenFailure (err: NodeJS.ErrnoException, port: number, host: string): string {
  switch (err.code) {
    case 'EADDRINUSE':
      return `PORT ${port} on ${host} is already in use by another process (EADDRINUSE); stop that process or set PORT to a free port`
    case 'EACCES':
      return `PORT ${port} on ${host} needs privileges this process lacks (EACCES); set PORT to 1024 or above`
    case 'EADDRNOTAVAIL':
      return `HOST ${host} is not an address of this machine (EADDRNOTAVAIL); set HOST to one of its addresses, or 0.0.0.0`
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return `HOST ${host} could not be resolved (${err.code}); set HOST to an address of this machine`
    default:
      return `listening on HOST ${host}, PORT ${port}: ${err.message}`
  }
}
