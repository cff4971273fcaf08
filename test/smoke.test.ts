import t from 'tap'
import { build, get } from './helper.js'

t.test('health answers', async (t) => {
  const app = await build(t)
  const res = await app.inject({ method: 'GET', url: '/health' })
  t.equal(res.statusCode, 200)
  const stats = await get(app, '/stats')
  t.equal(stats.json().total_sessions, 0)
})
