// The widget manager (@jupyter-widgets/html-manager 1.x) typesets every widget label
// through MathJax 2's `MathJax.Hub.Queue`; the site loads MathJax 3, which offers
// `MathJax.typesetPromise` instead. Bridge the one call, once MathJax 3 has loaded (it
// is a deferred script, so it has run by DOMContentLoaded, before the widgets render).
document.addEventListener("DOMContentLoaded", function () {
  var mathjax = window.MathJax;
  if (!mathjax || mathjax.Hub || !mathjax.typesetPromise) return;
  mathjax.Hub = {
    Queue: function (job) {
      var element = job && job[2];
      if (element) mathjax.typesetPromise([element]).catch(function () {});
    },
  };
});
