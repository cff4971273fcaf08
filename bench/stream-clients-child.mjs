// Event-stream clients in a process of their own, so that reading 1,000 streams competes
// neither with the server nor with autocannon in the parent. Messages from the parent:
//   { type: 'connect', port, n }     opens n streams (every session); answers in kind
//   { type: 'reset' }                forgets arrivals so far
//   { type: 'latency', times }       times: [seq, emitted epoch ms][]; answers with percentiles of arrival - emission
//   { type: 'stop' }
import net from 'node:net'

const epochMs = () => performance.timeOrigin + performance.now()
const sockets = []
let arrivals = []

function streamClient (port) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1')
    let tail = ''
    let opened = false
    socket.setEncoding('latin1')
    socket.on('error', reject)
    socket.on('data', (chunk) => {
      const at = epochMs()
      if (!opened) {
        opened = true
        if (!chunk.startsWith('HTTP/1.1 200')) return reject(new Error(`stream refused: ${chunk.slice(0, 80)}`))
        resolve(socket)
      }
      const text = tail + chunk
      let from = 0
      for (;;) {
        const i = text.indexOf('\nid: ', from)
        if (i < 0) break
        const end = text.indexOf('\n', i + 5)
        if (end < 0) break
        const id = text.slice(i + 5, end)
        arrivals.push(at, Number(id.slice(id.lastIndexOf('-') + 1)))
        from = end
      }
      tail = text.slice(Math.max(from, text.length - 64))
    })
    socket.write('GET /api/v1/tasks/events HTTP/1.1\r\nHost: bench\r\n\r\n')
  })
}

function percentile (sorted, p) {
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]
}

process.on('message', async (message) => {
  try {
    if (message.type === 'connect') {
      for (let i = 0; i < message.n; i++) sockets.push(await streamClient(message.port))
      process.send({ type: 'connect' })
    } else if (message.type === 'reset') {
      arrivals = []
      process.send({ type: 'reset' })
    } else if (message.type === 'latency') {
      const emitted = new Map(message.times)
      const latencies = []
      for (let i = 0; i < arrivals.length; i += 2) {
        const at = emitted.get(arrivals[i + 1])
        if (at !== undefined) latencies.push(arrivals[i] - at)
      }
      latencies.sort((a, b) => a - b)
      process.send({ type: 'latency', deliveries: latencies.length, p50: percentile(latencies, 50), p99: percentile(latencies, 99), max: latencies.at(-1) ?? NaN })
    } else if (message.type === 'stop') {
      for (const socket of sockets) socket.destroy()
      process.exit(0)
    }
  } catch (err) {
    process.send({ type: 'error', message: err?.stack ?? String(err) }, () => process.exit(1))
  }
})
