// Driver for profiling the real server under autocannon load (server in a child run with --cpu-prof):
//   node bench/profile/make-fixture.mjs /tmp/tv-10k 10000
//   node bench/profile/http.mjs stats /tmp/tv-10k /tmp/prof [seconds=5]
//   node bench/profile/http.mjs progress /tmp/tv-10k /tmp/prof
//   node bench/profile/http.mjs create - /tmp/prof           (fresh temp folder)
//   node bench/profile/summarize.mjs /tmp/prof/<newest>.cpuprofile
import { cannon, startServer } from '../lib/http.mjs'
import { removeDir, tempDir } from '../lib/fixtures.mjs'

const [what, dirArg, profDir, secondsArg = '5'] = process.argv.slice(2)
const dir = dirArg === '-' ? tempDir('profile-http') : dirArg
const server = await startServer({ kind: 'app', dir, execArgv: ['--cpu-prof', `--cpu-prof-dir=${profDir}`] })
try {
  let options
  if (what === 'stats') options = { url: `${server.url}/api/v1/tasks/stats` }
  else if (what === 'progress') options = { url: `${server.url}/api/v1/tasks/progress?session_id=s000042` }
  else if (what === 'create') {
    let n = 0
    options = { url: server.url, requests: [{ method: 'POST', path: '/api/v1/tasks/create', headers: { 'content-type': 'application/json' }, setupRequest: (req) => ({ ...req, body: JSON.stringify({ session_id: `p_${++n}`, instructions: '1. Write code for the binary search function\n2. Analyze the latency logs from last night\n3. Research prior art on write coalescing' }) }) }] }
  } else throw new Error(`unknown target ${what}`)
  const result = await cannon({ ...options, duration: Number(secondsArg) })
  console.log(`${what}: ${Math.round(result.rps)} req/s, p99 ${result.p99_ms} ms, failed ${result.non2xx + result.errors}`)
} finally {
  await server.stop()
  if (dirArg === '-') removeDir(dir)
}
