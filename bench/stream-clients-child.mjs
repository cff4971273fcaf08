// Event-stream clients in a process of their own, so that reading 1,000 streams competes
// neither with the server nor with autocannon in the parent. Messages from the parent:
//   { type: 'connect', port, n, sample }  opens n streams (every session); every `sample`-th one
//                                         times its arrivals; answers in kind
//   { type: 'reset' }                     forgets what arrived so far and starts recording
//   { type: 'latency', times }            times: [seq, emitted epoch ms][]; answers with percentiles
//                                         of arrival - emission, the events counted and this process's
//                                         CPU time (cpu_us) since the reset, and stops recording
//   { type: 'disconnect' }                closes every stream; answers in kind
//   { type: 'stop' }
// As lean as a load generator should be, since it shares the 2 cores with the server: outside
// recording the clients read and drop what arrives; while recording, every client counts its
// events (a native byte search) and only the sampled ones parse ids and keep times. Parsing
// every event on every client (1,000 x ~400 a second) would itself delay the readings.
import net from 'node:net'

const epochMs = () => performance.timeOrigin + performance.now()
const ID = Buffer.from('\nid: ')
const clients = []
let recording = false
/** This process's CPU time when recording began: what the load generator itself costs. */
let cpuAtReset = null

/** One buffer every socket reads into (`onread`): each read is handled before the next one lands. */
const READ_BUFFER = Buffer.alloc(256 * 1024)

function streamClient (port, timed) {
  return new Promise((resolve, reject) => {
    const client = { socket: null, timed, count: 0, arrivals: [], carry: Buffer.alloc(0) }
    let opened = false
    // onread: no Buffer made and no 'data' event emitted per read, the cheapest way Node reads a socket.
    const socket = client.socket = net.connect({ port, host: '127.0.0.1', onread: { buffer: READ_BUFFER, callback: (length, buffer) => { onRead(buffer.subarray(0, length)) } } })
    socket.on('error', reject)
    const onRead = (chunk) => {
      const at = epochMs()
      if (!opened) {
        opened = true
        if (chunk.toString('latin1', 0, 12) !== 'HTTP/1.1 200') return reject(new Error(`stream refused: ${chunk.toString('latin1', 0, 80)}`))
        resolve(client)
      }
      if (!recording) return
      // A frame may straddle two chunks: the end of the last one is searched again.
      const bytes = client.carry.length === 0 ? chunk : Buffer.concat([client.carry, chunk])
      let from = 0
      for (;;) {
        const i = bytes.indexOf(ID, from)
        if (i < 0) break
        const end = bytes.indexOf(10, i + ID.length)
        if (end < 0) break
        client.count++
        if (timed) {
          const id = bytes.toString('latin1', i + ID.length, end)
          client.arrivals.push(at, Number(id.slice(id.lastIndexOf('-') + 1)))
        }
        from = end
      }
      // A copy: the read buffer is reused by the next read.
      client.carry = Buffer.from(bytes.subarray(Math.max(from, bytes.length - 64)))
    }
    socket.write('GET /api/v1/tasks/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
  })
}

function percentile (sorted, p) {
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]
}

process.on('message', async (message) => {
  try {
    if (message.type === 'connect') {
      for (let i = 0; i < message.n; i++) clients.push(await streamClient(message.port, i % message.sample === 0))
      process.send({ type: 'connect' })
    } else if (message.type === 'reset') {
      for (const client of clients) {
        client.count = 0
        client.arrivals = []
        // Chunks start where a frame does: the newline that ended the frame before lets the first id be found.
        client.carry = Buffer.from('\n')
      }
      recording = true
      cpuAtReset = process.cpuUsage()
      process.send({ type: 'reset' })
    } else if (message.type === 'latency') {
      recording = false
      const cpu = process.cpuUsage(cpuAtReset)
      const emitted = new Map(message.times)
      const latencies = []
      let counted = 0
      let timedClients = 0
      for (const client of clients) {
        counted += client.count
        if (!client.timed) continue
        timedClients++
        for (let i = 0; i < client.arrivals.length; i += 2) {
          const at = emitted.get(client.arrivals[i + 1])
          if (at !== undefined) latencies.push(client.arrivals[i] - at)
        }
      }
      latencies.sort((a, b) => a - b)
      process.send({ type: 'latency', deliveries: latencies.length, timed_clients: timedClients, counted, p50: percentile(latencies, 50), p99: percentile(latencies, 99), max: latencies.at(-1) ?? NaN, cpu_us: cpu.user + cpu.system })
    } else if (message.type === 'disconnect') {
      for (const client of clients.splice(0)) client.socket.destroy()
      process.send({ type: 'disconnect' })
    } else if (message.type === 'stop') {
      for (const client of clients) client.socket.destroy()
      process.exit(0)
    }
  } catch (err) {
    process.send({ type: 'error', message: err?.stack ?? String(err) }, () => process.exit(1))
  }
})
