// What one write to a stream client costs the server: 1,000 loopback TCP clients in a child
// process, one 600-byte write to each per round, through socket.write (what the event streams do)
// and through a plain write(2) on the socket's descriptor (the kernel's share alone).
//   node bench/profile/socket-writes.mjs [clients=1000] [rounds=40] [port=7599]
import { fork } from 'node:child_process'
import { writeSync } from 'node:fs'
import net from 'node:net'
import { fileURLToPath } from 'node:url'

const [clientsArg = '1000', roundsArg = '40', portArg = '7599', role] = process.argv.slice(2)
const [clients, rounds, port] = [Number(clientsArg), Number(roundsArg), Number(portArg)]

if (role === 'clients') {
  for (let i = 0; i < clients; i++) net.connect(port, '127.0.0.1').resume()
} else {
  const sockets = []
  const server = net.createServer((socket) => { sockets.push(socket) })
  server.listen(port, '127.0.0.1', async () => {
    const child = fork(fileURLToPath(import.meta.url), [clientsArg, roundsArg, portArg, 'clients'])
    while (sockets.length < clients) await new Promise((resolve) => setTimeout(resolve, 50))
    const chunk = Buffer.alloc(600, 'a')
    const ways = {
      'socket.write': (socket) => socket.write(chunk),
      // The descriptor is Node's own (not a public API): for this measurement only.
      'write(2) on the fd': (socket) => writeSync(socket._handle.fd, chunk)
    }
    const times = Object.fromEntries(Object.keys(ways).map((name) => [name, []]))
    for (let r = 0; r < rounds; r++) {
      const order = r % 2 === 0 ? Object.keys(ways) : Object.keys(ways).reverse()
      for (const name of order) {
        const start = process.hrtime.bigint()
        for (const socket of sockets) ways[name](socket)
        times[name].push(Number(process.hrtime.bigint() - start) / 1000 / sockets.length)
        await new Promise((resolve) => setTimeout(resolve, 30))
      }
    }
    for (const [name, list] of Object.entries(times)) {
      list.sort((a, b) => a - b)
      console.log(`${name}: ${list[list.length >> 1].toFixed(2)} µs a client (median of ${rounds})`)
    }
    child.kill()
    for (const socket of sockets) socket.destroy()
    server.close()
  })
}
