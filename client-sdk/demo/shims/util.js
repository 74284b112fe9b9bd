// The one part of Node's `util` that sharedb's client uses in a browser.
export function inherits (ctor, superCtor) {
  ctor.super_ = superCtor
  Object.setPrototypeOf(ctor.prototype, superCtor.prototype)
}
