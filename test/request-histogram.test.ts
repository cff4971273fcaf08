import t from 'tap'
import { Histogram, Registry, type Metric } from 'prom-client'
import { RequestHistogram } from '../services/metrics/request-histogram.js'

t.test('RequestHistogram scrapes exactly as a prom-client Histogram fed the same requests', async (t) => {
  const buckets = [0.001, 0.01, 0.1, 1]
  const theirs = new Registry()
  const ours = new Registry()
  const reference = new Histogram({ name: 'http_request_duration_seconds', help: 'h', labelNames: ['method', 'route', 'status_code'], buckets, registers: [theirs] })
  const histogram = new RequestHistogram('http_request_duration_seconds', 'h', buckets)
  ours.registerMetric(histogram as unknown as Metric)
  const requests: Array<[string, string, number, number]> = [
    ['GET', '/progress', 200, 0.0004], ['GET', '/progress', 200, 0.001], ['GET', '/progress', 200, 0.5],
    ['POST', '/create', 200, 0.02], ['POST', '/create', 507, 3], ['GET', '/progress', 404, 0.0001], ['GET', 'unmatched', 404, 0.1]
  ]
  for (const [method, route, status, seconds] of requests) {
    reference.observe({ method, route, status_code: String(status) }, seconds)
    histogram.observe(method, route, status, seconds)
  }
  const lines = async (registry: Registry): Promise<string[]> => (await registry.metrics()).split('\n').filter((line) => line !== '').sort()
  t.strictSame(await lines(ours), await lines(theirs))
  histogram.reset()
  t.strictSame(await lines(ours), ['# HELP http_request_duration_seconds h', '# TYPE http_request_duration_seconds histogram'], 'reset empties it')
})
