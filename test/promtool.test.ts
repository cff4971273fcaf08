/**
 * Prometheus' own checker accepts what the real server serves at /metrics: `promtool check
 * metrics` (Debian package `prometheus`) exits 0 on a scrape taken after requests (a client
 * error among them), saves and agent calls. Without promtool the test is skipped, loudly.
 */
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import net from 'node:net'
import t from 'tap'
import { call, scratch } from './server-process.js'

const found = spawnSync('promtool', ['--version'], { encoding: 'utf8' })
const missing = found.error !== undefined || found.status !== 0

if (missing) {
  t.comment('**********************************************************************')
  t.comment('promtool is NOT installed: /metrics was NOT checked against Prometheus\'')
  t.comment('naming rules. Install the Debian package: apt-get install -y prometheus')
  t.comment('**********************************************************************')
}

/** promtool's exit code and everything it printed, with `text` on its stdin. */
async function promtoolCheck (text: string): Promise<{ code: number | null, output: string }> {
  const child = spawn('promtool', ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] })
  let output = ''
  child.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const closed = new Promise<number | null>((resolve, reject) => {
    child.once('error', reject)
    child.once('close', resolve)
  })
  child.stdin.end(text)
  return { code: await closed, output }
}

t.test('promtool check metrics accepts the real server\'s /metrics', { skip: missing && 'promtool is not installed (Debian package: prometheus)' }, async (t) => {
  const { start } = await scratch(t)
  const server = await start()
  // Every series with samples: requests (one 404), a save, agent calls, process metrics.
  t.equal((await call(server, 'POST', '/api/v1/tasks/create', { session_id: 'prom', instructions: '1. write code\n2. explain it' })).status, 200)
  t.equal((await call(server, 'POST', '/api/v1/tasks/execute-all', { session_id: 'prom' })).status, 200)
  t.equal((await call(server, 'GET', '/api/v1/tasks/progress?session_id=missing')).status, 404)
  // A client error, counted with the fixed method label of a request never parsed.
  const garbage = net.connect(server.port, '127.0.0.1').end('NOT HTTP AT ALL\r\n\r\n')
  garbage.on('error', () => {}).resume()
  await once(garbage, 'close')
  const res = await fetch(`${server.base}/metrics`)
  t.equal(res.status, 200)
  const text = await res.text()
  t.match(text, /^# TYPE nodejs_active_handles gauge$/mu, 'the by-type gauges stay')
  t.match(text, /^taskvault_agent_call_duration_seconds_count\{/mu, 'taskvault series are in the scrape')
  t.match(text, /^http_request_duration_seconds_count\{method="unknown",route="unmatched",status_code="400"\} 1$/mu, 'the client error is in the scrape')
  const { code, output } = await promtoolCheck(text)
  t.equal(code, 0, `promtool check metrics exits 0${output === '' ? '' : `; it said:\n${output}`}`)
  t.equal((await server.stop('SIGTERM')).code, 0)
})
