# taskvault: build with every dependency, run with production ones only, as a non-root user.
#   docker build -t taskvault:0.1.0 .
#   docker run -p 7000:7000 -v taskvault-data:/app/data/tasks -e TASK_API_KEYS=... taskvault:0.1.0

# Node 24 LTS (supported to April 2028), pinned to a minor so rebuilds take its patches only.
# Pin a digest too for reproducible builds: --build-arg NODE_IMAGE=node:24.21-slim@sha256:<digest>
ARG NODE_IMAGE=node:24.21-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
# Scripts off: nothing to build before the sources are in.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY . .
RUN npm run build && rm -rf dist/test dist/examples dist/*.tsbuildinfo

FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force

FROM ${NODE_IMAGE}
# tini (Debian's) as PID 1: it reaps orphans, which Node as PID 1 never does (a command agent's
# setsid'd leftovers end up there), and forwards SIGTERM to the server.
RUN apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/*
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=7000 \
    TASK_STORAGE_DIR=/app/data/tasks
WORKDIR /app
# Code and dependencies stay root-owned and read-only to the service; only the data folder is its own.
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
# The dashboard's files (its script built above): served from the image, no CDN.
COPY --from=build /app/dashboard/static ./dashboard/static
COPY --from=build /app/migrations ./migrations
COPY package.json ./
RUN mkdir -p /app/data/tasks && chown 1000:1000 /app/data/tasks && chmod 700 /app/data/tasks
# Numeric, so Kubernetes' runAsNonRoot can verify it (the image's `node` user is 1000).
USER 1000:1000
VOLUME ["/app/data/tasks"]
EXPOSE 7000
# The image has no curl; Node has fetch.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 7000) + '/health').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
STOPSIGNAL SIGTERM
# Exec form, no shell: tini passes SIGTERM to node, whose close-with-grace drains and exits;
# tini then exits with node's code.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["node", "dist/server.js"]
