// Experiment (not product code): what do an async onRequest hook (like verifyApiKey with no keys)
// and an async onSend hook (like the task manager's shutdown header) cost per GET on a bare route?
//   node bench/profile/hooks-experiment.mjs [seconds=3] [rounds=3]
import { fork } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import Fastify from 'fastify'
import { cannon } from '../lib/http.mjs'

const [secondsArg = '3', roundsArg = '3', role] = process.argv.slice(2)
const BODY = '{"session_id":"s000042","total":10,"completed":6,"failed":1,"pending":3,"in_progress":0,"all_done":false,"percentage":70}'

if (role) {
  const app = Fastify({ logger: false })
  if (role === 'hooks') {
    const stopping = false
    app.addHook('onRequest', async () => {})
    app.addHook('onSend', async (_request, reply) => { if (stopping) reply.header('connection', 'close') })
  }
  app.get('/x', async (_req, reply) => reply.type('application/json; charset=utf-8').send(BODY))
  const address = await app.listen({ host: '127.0.0.1', port: 0 })
  process.send({ url: address })
  process.on('message', (m) => {
    if (m === 'cpu') process.send({ cpu: process.cpuUsage() })
    if (m === 'stop') app.close().then(() => process.exit(0))
  })
} else {
  const servers = {}
  for (const kind of ['plain', 'hooks']) {
    const child = fork(fileURLToPath(import.meta.url), [secondsArg, roundsArg, kind])
    const url = await new Promise((resolve) => child.once('message', (m) => resolve(m.url)))
    servers[kind] = { child, url, cpu: () => new Promise((resolve) => { child.once('message', (m) => resolve(m.cpu)); child.send('cpu') }) }
    await cannon({ url: url + '/x', duration: 1 })
  }
  const results = { plain: [], hooks: [] }
  for (let r = 0; r < Number(roundsArg); r++) {
    for (const [kind, s] of Object.entries(servers)) {
      const a = await s.cpu()
      const res = await cannon({ url: s.url + '/x', duration: Number(secondsArg) })
      const b = await s.cpu()
      results[kind].push({ rps: res.rps, cpu: (b.user - a.user + b.system - a.system) / res.requests })
    }
  }
  const med = (a) => [...a].sort((x, y) => x - y)[a.length >> 1]
  for (const [kind, list] of Object.entries(results)) console.log(`${kind.padEnd(6)} ${Math.round(med(list.map((x) => x.rps)))} req/s  ${med(list.map((x) => x.cpu)).toFixed(1)} us CPU/request`)
  for (const s of Object.values(servers)) s.child.send('stop')
}
