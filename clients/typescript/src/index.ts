/**
 * embed-cluster-client: start, follow, use and stop an embed-cluster from Node.js or Electron.
 *
 * `EmbedClusterClient` / `PythonSidecarClient` talk HTTP to a running cluster; `EmbedClusterService` /
 * `PythonSidecarService` run `embed-cluster up` as a child process. The seed's names are aliases, so an app
 * that used the seed's two classes changes its import, not its calls.
 */

export {
  EmbedClusterClient,
  EmbedClusterClient as PythonSidecarClient,
  type ChunkOptions,
  type ChunksResult,
  type EmbedOptions,
  type RankedText,
  type RerankOptions,
  type TokenizeOptions,
  type TokenizeResult,
  type EmbedClusterClientConfig,
  type EmbedClusterClientConfig as PythonSidecarClientConfig,
  type HealthResponse,
  type InfoLimits,
  type InfoResponse,
  type PdfChunk,
  type PdfResult,
  type TextChunk,
  type WorkerInfo,
} from "./client.js";
export {
  EmbedError,
  SidecarError,
  type EmbedErrorKind,
  type EmbedErrorOptions,
  type SidecarErrorCode,
  type SidecarErrorOptions,
} from "./errors.js";
export * from "./events.js";
export { commandCandidates, findCommand } from "./locate.js";
export {
  EmbedClusterService,
  EmbedClusterService as PythonSidecarService,
  type EmbedClusterServiceConfig,
  type EmbedClusterServiceConfig as PythonSidecarServiceConfig,
  type ServiceState,
  type SidecarStatus,
} from "./service.js";
