#!/usr/bin/env node
// dynalite's own command line, with one difference: a client that goes away while
// its request is being served is ignored instead of taking the emulator down.
//
// dynalite's request handler rethrows a request's 'error' event
// (`req.on('error', function (err) { throw err })`), so one aborted request (a
// process killed mid-call, a client's timeout: Node reports ECONNRESET "aborted")
// ends the whole emulator, and every caller's next request fails until it is
// started again. Here the handler sees every other error as before.
'use strict'

const http = require('http')

const createServer = http.createServer
http.createServer = function (...args) {
  const last = args.length - 1
  const handler = args[last]
  if (typeof handler === 'function') {
    args[last] = function (req, res) {
      const on = req.on
      req.on = function (event, listener) {
        if (event !== 'error') return on.call(this, event, listener)
        return on.call(this, event, function (err) {
          if (err && err.code === 'ECONNRESET') return // nobody is left to read the answer
          return listener.call(this, err)
        })
      }
      return handler.call(this, req, res)
    }
  }
  return createServer.apply(this, args)
}

require('dynalite/cli.js')
