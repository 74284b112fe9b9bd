// @yserve/client: the TypeScript client of yserve (SPEC §7).
//
// `Y` is re-exported so that an app depending only on this package shares the SDK's one
// copy of yjs: two copies break Yjs's constructor checks (yjs issue #438).

export * as Y from 'yjs'
export { default as Delta } from 'quill-delta'

export { YserveProvider } from './provider.js'
export type { YserveProviderOptions, YserveProviderEvents, ProviderStatus } from './provider.js'

export { Presence } from './presence.js'
export type { Peer, PresenceUser, PresenceOptions } from './presence.js'

export { OtClient, OtText } from './ot.js'
export type { OtClientOptions, OtClientEvents, OtTextEvents, OtConnectionState, OtError, OtRange } from './ot.js'

export { ApiClient, ApiError, isApiError, parseSse } from './api.js'
export type { AnyApiError, ApiClientOptions, EventStreamOptions, SseMessage } from './api.js'

export type { TokenSource, WebSocketConstructor, WebSocketLike } from './token.js'
export { encodeDocPath, InvalidNameError } from './token.js'

export * from './wire.js'
