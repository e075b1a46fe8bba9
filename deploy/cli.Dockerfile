# syntax=docker/dockerfile:1
# troupe, the command line: status, send, request, quarantine, release, replay.
# Build from the repository root: docker build -f deploy/cli.Dockerfile -t troupe/cli .
# The build stage is the same in the three Dockerfiles (worker, coordinator, cli), so one
# cached build serves all of them.
ARG NODE_IMAGE=node:22-bookworm-slim

FROM ${NODE_IMAGE} AS build
ENV CI=true TURBO_TELEMETRY_DISABLED=1 DO_NOT_TRACK=1
WORKDIR /src
COPY package.json package-lock.json turbo.json tsconfig.base.json ./
COPY packages ./packages
COPY apps ./apps
COPY examples ./examples
COPY deploy/image-tree.sh ./deploy/
# npm ci checks every workspace of the lock file, so bench's manifest must be there too.
COPY bench/package.json ./bench/
RUN --mount=type=cache,target=/root/.npm npm ci --no-audit --no-fund
RUN npx turbo run build --filter=@troupe/worker --filter=@troupe/coordinator-service --filter=@troupe/cli --filter="./examples/*" --output-logs=errors-only
# What the runtime stages take: the manifests and the compiled dist/ of every workspace.
RUN sh deploy/image-tree.sh .image

FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /src/.image/ ./
# Production dependencies of this app's workspaces only (workspace siblings are symlinks).
# `troupe dev` finds and runs nats-server through @troupe/testkit; its optional
# testcontainers path is for test machines with Docker, not for this image.
RUN --mount=type=cache,target=/root/.npm npm ci --omit=dev --omit=optional --no-audit --no-fund --workspace=@troupe/cli
USER node
ENTRYPOINT ["node", "apps/cli/dist/main.js"]
CMD ["--help"]
