// Send one message through an SMTP relay with Nodemailer (the SMTP client of most Node apps), no
// auth, no TLS. Usage: node nodemailer_send.js HOST PORT FROM TO[,TO...] FILE [BCC[,BCC...]]
// FILE is the message: its first line is the Subject, the rest the text body. Nodemailer builds the
// MIME itself, as an app's sendMail() call does. Prints sendMail()'s info as JSON (accepted,
// rejected, response) and exits 0, or prints the error (with the SMTP reply) and exits 1.
// NODE_PATH (set by the test) points at the directory where `npm install nodemailer` put it.
'use strict';

const fs = require('fs');
const nodemailer = require('nodemailer');

const [host, port, from, to, file, bcc] = process.argv.slice(2);
if (!file) {
    process.stderr.write('usage: node nodemailer_send.js HOST PORT FROM TO[,TO...] FILE [BCC[,BCC...]]\n');
    process.exit(2);
}
const [subject, ...body] = fs.readFileSync(file, 'utf8').split('\n');

const transport = nodemailer.createTransport({
    host,
    port: Number(port),
    secure: false,
    ignoreTLS: true, // the relay offers no STARTTLS; Nodemailer would otherwise try it when offered
    name: 'nodemailer.test',
    connectionTimeout: 30000,
    socketTimeout: 30000,
});

transport
    .sendMail({ from, to, bcc: bcc || undefined, subject, text: body.join('\n') })
    .then((info) => {
        const { accepted, rejected, response, messageId } = info;
        process.stdout.write(JSON.stringify({ accepted, rejected, response, messageId }) + '\n');
        process.exit(0);
    })
    .catch((error) => {
        const { code, responseCode, response, rejected } = error;
        process.stdout.write(JSON.stringify({ error: String(error.message), code, responseCode, response, rejected }) + '\n');
        process.exit(1);
    });
